"""The manifest schema: what a snapshot's ``manifests/<seq>.json`` must look like.

A manifest is parsed as JSON and then checked against these msgspec Structs, so a
file that is valid JSON but has a wrong type anywhere (``"shards": "abc"``, an
object name that is not a SHA-256, a negative count) counts as corrupt: loading
falls back past it with the reason, exactly as for a torn file. Object names must be
64 lowercase hex digits, so no manifest can point outside ``DIR/objects``.

Unknown fields are allowed (a newer minor version may add some); fields that a
reader needs are required.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from streams.errors import SnapshotError

__all__ = ["Digest", "Manifest", "SegmentManifest", "ShardManifest", "validate_manifest"]

Digest = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
"""The SHA-256 hex name of an object in ``DIR/objects``."""

Count = Annotated[int, msgspec.Meta(ge=0)]


class SegmentManifest(msgspec.Struct, forbid_unknown_fields=False):
    """One segment of a shard: its index object and, optionally, its dead ids."""

    object: Digest
    ntotal: Count = 0
    dead: Digest | None = None


class ShardManifest(msgspec.Struct, forbid_unknown_fields=False):
    """One shard: its segments, key map, count and source position."""

    name: str
    ntotal: Count
    position: dict[str, Count]
    segments: list[SegmentManifest] = []
    # Manifests of the first releases held a shard as one index object.
    object: Digest | None = None
    epoch: Count = 0
    keys: Digest | None = None
    floats_map: Digest | None = None
    float_rows: Count = 0


class Manifest(msgspec.Struct, forbid_unknown_fields=False):
    """One snapshot: the index configuration and every shard."""

    schema: int
    seq: Count
    shards: list[ShardManifest]
    dim: Annotated[int, msgspec.Meta(ge=1)]
    metric: str = "ip"
    factory: str = "Flat"
    ntotal: Count = 0
    parent: Count | None = None
    created: str | None = None
    worker: str | None = None
    normalize_queries: bool = False
    template: Digest | None = None
    quantize: str | None = None
    codec: Digest | None = None
    binary: bool = False
    rerank: Count = 0


def validate_manifest(body: Any, seq: int) -> None:
    """Check a parsed manifest against the schema.

    Raises:
        SnapshotError: naming the first field that is wrong, e.g. ``Expected `array`,
            got `str` - at `$.shards```.
    """
    try:
        msgspec.convert(body, Manifest)
    except msgspec.ValidationError as exc:
        raise SnapshotError(f"manifest {seq} does not match the manifest schema: {exc}") from None
    names = [s["name"] for s in body["shards"]]
    if len(set(names)) != len(names):
        raise SnapshotError(f"manifest {seq} names a shard twice")
