"""The store: ClickHouse for citystream, embedded (chdb) or a real server.

Why a server process around an embedded engine: only one process may open a
chdb data directory, yet the loader, the CLI, the tests and Grafana all need
the data. So one long-lived process (``citystream store serve``) owns the
directory and speaks ClickHouse's HTTP interface on 127.0.0.1, and everything
else connects to it with the ordinary ClickHouse clients - exactly as it
would to a ClickHouse server given by URL, which is the deployment option.

Modules (each states its contract in its header):

* :mod:`citystream.store.client` - ``connect(settings, readonly=False)``: the
  clickhouse-connect client every other component uses.
* :mod:`citystream.store.migrate` - ``migrate(settings)``: versioned schema
  migrations from ``infra/clickhouse/migrations``.
* :mod:`citystream.store.rollups` - ``seal(client)``: turns hours of
  window_aggregates that got windows into the rollup rows dashboards read
  (migration 0005); the loader runs it between its inserts.
* :mod:`citystream.store.server` - the HTTP server (``StoreServer``, ``serve``).
* :mod:`citystream.store.engine` - the chdb engine, its connections and sessions.
* :mod:`citystream.store.wire` - compressed blocks, CityHash128, Native re-framing.
* :mod:`citystream.store.sqltext` - statement classification and splitting.
* :mod:`citystream.store.errors` - ClickHouse error codes and HTTP statuses.
* :mod:`citystream.store.cli` - ``citystream store serve | migrate | seal | status``
  and ``citystream load``.

The loader (connectors/loader.py) runs inside the store process
(``store serve --loader``, as the stack starts it) and writes through the
store's own HTTP interface, so it is the same code that ``citystream load``
runs against a real ClickHouse server.

Nothing here is imported eagerly: ``import citystream.store`` stays cheap.
"""
