"""The composition root: the only part of ``streams`` that imports ``operators`` and
``sinks``. It holds the ``embedstream`` command line (:mod:`streams.app.cli`), the
ingest builder with :class:`~streams.app.ingest.IngestOptions`, the HTTP server,
Prometheus exposition, the terminal view, logging and process tuning (glibc's mmap
threshold, the garbage collector)."""
