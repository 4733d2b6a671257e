"""chserver: ClickHouse's HTTP interface in front of an embedded chdb engine.

Why: only one process may open a chdb data directory, yet many clients need
the data. One long-lived process owns the directory and speaks ClickHouse's
HTTP protocol, so every ordinary ClickHouse client (clickhouse-connect,
clickhouse-go, Grafana's plugin) can use it as it would a ClickHouse server.

This package imports only the standard library and third-party packages
(chdb, lz4, zstd): nothing of the application that embeds it, which maps its
own settings onto ``ServerConfig`` and may run work of its own beside
the server (:data:`~citystream.chserver.server.Companion`).

Modules (each states its contract in its header):

* :mod:`~citystream.chserver.server` - ``Server`` (``start``/``stop``) and
  ``serve`` (foreground, until SIGTERM/SIGINT).
* :mod:`~citystream.chserver.config` - ``ServerConfig``, ``User``.
* :mod:`~citystream.chserver.handler` - the HTTP layer; :mod:`~citystream.chserver.request`
  - a request's body, codings and parameters.
* :mod:`~citystream.chserver.engine` - the chdb engine, its connections and sessions.
* :mod:`~citystream.chserver.wire` - compressed blocks, HTTP codings, Native re-framing;
  :mod:`~citystream.chserver.cityhash` - the block checksum.
* :mod:`~citystream.chserver.policy` - who may run what, on the engine's own parse;
  :mod:`~citystream.chserver.external` - external data tables of a request;
  :mod:`~citystream.chserver.params` - URL parameters and statement text as bytes.
* :mod:`~citystream.chserver.native` - Native blocks for a client's protocol revision.
* :mod:`~citystream.chserver.sqltext` - where an INSERT's inline data starts (routing only:
  no decision of the policy rests on it).
* :mod:`~citystream.chserver.errors` - ClickHouse error codes and HTTP statuses.

Nothing is imported eagerly: ``import citystream.chserver.sqltext`` does not load chdb.
"""
