"""A seeded city of traffic, water and grid sensors with labelled anomalies and realistic imperfections.

Modules: ``model`` (zones, sites, sensors, topology), ``signals`` (vectorised
generators), ``anomalies`` (ground truth), ``imperfections`` (what real feeds
do), ``codec`` (column-wise Avro), ``engine`` (the run loop), ``sensors`` (the
run's registry entries), ``calibration`` (against public data), ``params``
(durations, times, speeds people type);
``citystream simulate`` itself is ``citystream.cli.simulate``.
"""
