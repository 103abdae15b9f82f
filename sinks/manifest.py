"""The manifest schema: what a snapshot's ``manifests/<seq>.json`` holds, typed.

Manifests are read straight into these msgspec Structs, so a file that is valid
JSON but has a wrong type anywhere (``"shards": "abc"``, an object name that is not
a SHA-256, a negative count) counts as corrupt: loading falls back past it with the
reason, exactly as for a torn file. Object names must be 64 lowercase hex digits,
so no manifest can point outside ``DIR/objects``.

Every manifest written before still loads: unknown fields are ignored, fields added
later have defaults, and the first releases' one-object shards (``"object"``) are
read as they were.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from streams.errors import SnapshotError

__all__ = [
    "SCHEMA_VERSION",
    "Digest",
    "IndexManifest",
    "Manifest",
    "ManifestBody",
    "RetrainRecord",
    "SegmentManifest",
    "ShardManifest",
    "decode_manifest",
    "encode_manifest",
]

SCHEMA_VERSION = 1

Digest = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
"""The SHA-256 hex name of an object in ``DIR/objects``."""

Count = Annotated[int, msgspec.Meta(ge=0)]


class SegmentManifest(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    """One segment of a shard: its index object and, optionally, its dead ids."""

    object: Digest
    ntotal: Count = 0
    dead: Digest | None = None
    # The trained template (codec generation) the segment's index was cloned from;
    # absent: the manifest's own ``template``.
    template: Digest | None = None
    # The payloads of its vectors (:mod:`sinks.payloads`); absent: none has one.
    payloads: Digest | None = None


class ShardManifest(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    """One shard: its segments, key map, count and source position.

    ``epoch`` rises by one each time a worker takes the shard over; the directory's
    state of a shard is its entry with the highest epoch (:mod:`sinks.shared`).
    """

    name: str
    ntotal: Count
    position: dict[str, Count]
    segments: list[SegmentManifest] = []
    epoch: Count = 0
    keys: Digest | None = None
    floats_map: Digest | None = None
    float_rows: Count = 0
    # Expiry (--ttl): the deadlines of the shard's vectors, and how many expired.
    expiry: Digest | None = None
    expired: Count = 0
    # Manifests of the first releases held a shard as one index object.
    object: Digest | None = None

    def objects(self) -> list[str]:
        """Every object this shard names."""
        out = [d for s in self.segments for d in (s.object, s.dead, s.payloads) if d]
        out.extend(d for d in (self.object, self.keys, self.floats_map, self.expiry) if d)
        return out


class RetrainRecord(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """When and why the index's codec was last retrained (:mod:`sinks.retrain`)."""

    generation: Count
    at: str
    reason: str
    drift: float | None = None
    sample: Count = 0
    seconds: float = 0.0


class IndexManifest(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """The index configuration: what every shard of the directory is."""

    dim: Annotated[int, msgspec.Meta(ge=1)]
    metric: str = "ip"
    factory: str = "Flat"
    normalize_queries: bool = False
    template: Digest | None = None
    quantize: str | None = None
    codec: Digest | None = None
    binary: bool = False
    rerank: Count = 0
    # Search-time parameters searches use by default (``embedstream tune`` picks them).
    search_params: dict[str, Count] = {}
    # Codec generations: 0 for the first training, +1 per retrain on drift; the
    # codec's fit on the first vectors after training (the drift baseline); the
    # last retrain.
    generation: Count = 0
    codec_fit: float | None = None
    last_retrain: RetrainRecord | None = None
    # Seconds after its event time a vector expires (``--ttl``); None: never.
    ttl: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # Declared payload fields (``--payload-index``): field -> keyword|int|float|bool.
    payload_index: dict[str, str] = {}


class ManifestBody(IndexManifest, kw_only=True):
    """What a writer commits: the configuration, the writer, and every shard."""

    worker: str | None = None
    ntotal: Count = 0
    shards: list[ShardManifest]


class Manifest(ManifestBody, kw_only=True):
    """One committed snapshot (:meth:`sinks.store.SnapshotStore.commit` adds the
    sequence number, its parent and the time)."""

    schema: int
    seq: Count
    parent: Count | None = None
    created: str | None = None

    def objects(self, names: frozenset[str] | set[str] | None = None) -> list[str]:
        """Every object this snapshot names (of the shards in ``names``, if given)."""
        out = [d for d in (self.template, self.codec) if d]
        for shard in self.shards:
            if names is None or shard.name in names:
                out.extend(shard.objects())
        return out


_decoder = msgspec.json.Decoder(Manifest)


def decode_manifest(data: bytes, seq: int) -> Manifest:
    """Parse and check one manifest.

    Raises:
        SnapshotError: not JSON, not this schema version, or a field of the wrong
            type (the message names it, e.g. ``Expected `array`, got `str` - at
            `$.shards```).
    """
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise SnapshotError(f"manifest {seq} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("seq") != seq or "shards" not in raw:
        raise SnapshotError(f"manifest {seq} is incomplete or not a manifest")
    if raw.get("schema") != SCHEMA_VERSION:
        raise SnapshotError(
            f"manifest {seq} has schema {raw.get('schema')!r}; this version reads {SCHEMA_VERSION}"
        )
    try:
        manifest = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise SnapshotError(f"manifest {seq} does not match the manifest schema: {exc}") from None
    names = [s.name for s in manifest.shards]
    if len(set(names)) != len(names):
        raise SnapshotError(f"manifest {seq} names a shard twice")
    return manifest


def encode_manifest(manifest: Manifest) -> bytes:
    """The JSON of a manifest, indented for people who read it."""
    return msgspec.json.format(msgspec.json.encode(manifest), indent=1)
