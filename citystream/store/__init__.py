"""The store: ClickHouse for citystream, embedded (chdb) or a real server; citystream's schema in it.

Why a server process around an embedded engine: only one process may open a
chdb data directory, yet the loader, the CLI, the tests and Grafana all need
the data. So one long-lived process (``citystream store serve``) owns the
directory and speaks ClickHouse's HTTP interface on 127.0.0.1, and everything
else connects to it with the ordinary ClickHouse clients - exactly as it
would to a ClickHouse server given by URL, which is the deployment option.
That server is :mod:`citystream.chserver`, a self-contained package; this
package holds what is citystream's:

* :mod:`citystream.store.client` - ``connect(settings, readonly=False)``: the
  clickhouse-connect client every other component uses.
* :mod:`citystream.store.migrate` - ``migrate(settings)``: versioned schema
  migrations from ``infra/clickhouse/migrations``.
* :mod:`citystream.store.rollups` - ``seal(client)``: turns hours of
  window_aggregates that got windows into the rollup rows dashboards read
  (migration 0005); the loader runs it between its inserts.
* :mod:`citystream.store.serving` - citystream's settings mapped onto the
  chserver configuration; ``serve`` (``citystream store serve``).
* :mod:`citystream.store.admin` - sealing everything, and the status report.
* :mod:`citystream.store.query` - one statement, printed (``citystream query``).

The command lines are citystream/cli/store.py and citystream/cli/query.py.
The loader (citystream.connectors.loader) depends on this package, never the
reverse; ``store serve --loader`` runs it beside the server as a chserver
companion (connectors/loader/background.py), writing through the server's own
HTTP interface, so it is the same code that ``citystream load`` runs against
a real ClickHouse server.

Nothing here is imported eagerly: ``import citystream.store`` stays cheap.
"""
