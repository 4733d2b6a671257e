"""citystream's Grafana dashboards, as code.

Why code rather than JSON edited in Grafana's UI: the dashboards read tables
whose shape the migrations define, and a renamed column must break a test, not
a wall screen in the control room. :mod:`dashboards.boards` composes the
dashboards from the factories in :mod:`dashboards.factories` and the SQL in
:mod:`dashboards.queries` (latest revisions only, resolution by time range);
:mod:`dashboards.build` writes them to ``dashboards/json/`` (committed, fixed
uids); :mod:`dashboards.push` upserts them into a Grafana.
"""
