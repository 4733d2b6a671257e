"""The simulation loop: generate a block of ticks, inject, encode, deliver in arrival order.

Why blocks of ticks: numpy pays off only on large arrays, so a block covers
enough ticks for ~20,000 readings; the block size depends only on the city,
never on ``--speed``, so pacing cannot change the payloads (same seed ->
byte-identical messages, in the same order).

Arrival order is event time plus an injected delay; readings that arrive
after the block's end wait in a per-domain queue and are merged into the next
block, so late and out-of-order readings interleave exactly as they would
on a real wire.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from citystream import catalog, contracts
from citystream.catalog import DOMAIN_NAMES
from citystream.registry.model import Sensor
from citystream.simulator import anomalies as anomaly_mod
from citystream.simulator.codec import BulkEncoder, Nullable, Strings
from citystream.simulator.imperfections import Imperfector, Rates
from citystream.simulator.model import City, build_city
from citystream.simulator.sensors import city_sensors
from citystream.simulator.signals import GENERATORS

#: Default simulated start: Monday 2026-01-05 00:00:00 UTC.
EPOCH_MS = 1_767_571_200_000
#: Avro record of each domain's readings, as the catalog declares them.
SCHEMAS = {d.name: d.record for d in catalog.DOMAINS}
LABEL_SCHEMA = "citystream.Label"
#: Readings per generated block (all domains together).
BLOCK_READINGS = 20_000

_SEED_TAGS = {"anomalies": 1, "traffic": 11, "water": 12, "grid": 13, "imperfect": 20, "layout": 30}


@dataclass(frozen=True)
class SimConfig:
    """Everything that determines the payloads of a run (wall-clock pacing does not)."""

    seed: int = 7
    start_ms: int = EPOCH_MS
    duration_ms: int = 600_000
    rate_per_min: float = 3.0
    sensors: int = 300
    domains: tuple[str, ...] = DOMAIN_NAMES
    speed: float | None = None  # None: as fast as possible; 1.0: real time; N: N times real time
    rates: Rates = field(default_factory=Rates)
    anomalies_per_hour: float = 12.0
    topic_prefix: str = "citystream."

    @property
    def dt_ms(self) -> int:
        return max(1, round(60_000 / self.rate_per_min))

    @property
    def n_steps(self) -> int:
        return self.duration_ms // self.dt_ms

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.n_steps * self.dt_ms

    def topic(self, domain: str) -> str:
        return f"{self.topic_prefix}{catalog.domain(domain).topic}"

    @property
    def labels_topic(self) -> str:
        return f"{self.topic_prefix}labels"

    @property
    def sensors_topic(self) -> str:
        """The sensor registry's compacted topic, where the run registers its sensors first."""
        return f"{self.topic_prefix}sensors"


class Sink(Protocol):
    """Where encoded messages go: Kafka, a counter (dry run) or a list (tests)."""

    def emit(self, topic: str, keys: list[bytes], values: list[bytes]) -> None: ...

    def flush(self) -> None: ...


class CountingSink:
    """Dry run: counts messages and bytes per topic."""

    def __init__(self) -> None:
        self.messages: dict[str, int] = {}
        self.bytes = 0

    def emit(self, topic: str, keys: list[bytes], values: list[bytes]) -> None:
        self.messages[topic] = self.messages.get(topic, 0) + len(values)
        self.bytes += sum(map(len, values))

    def flush(self) -> None:
        pass


class CaptureSink:
    """Keeps every (topic, key, value) in arrival order; for tests and small runs."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []

    def emit(self, topic: str, keys: list[bytes], values: list[bytes]) -> None:
        self.records.extend((topic, k, v) for k, v in zip(keys, values, strict=True))

    def flush(self) -> None:
        pass


class KafkaSink:
    """Produces through :class:`connectors.producer.ReadingProducer` (already opened by the caller).

    Unlike the in-memory sinks it also registers the run's sensors (:meth:`register`): the
    domain jobs dead-letter readings of sensors the registry does not know.
    """

    def __init__(self, producer: Any) -> None:
        self.producer = producer

    def emit(self, topic: str, keys: list[bytes], values: list[bytes]) -> None:
        self.producer.send_many(topic, keys, values)

    def register(self, topic: str, sensors: list[Sensor]) -> int:
        """Upsert the registry entries (key sensor id) and wait until Kafka has them; how many."""
        keys = [s.sensor_id.encode("utf-8") for s in sensors]
        self.producer.send_many(topic, keys, [s.encode() for s in sensors])
        self.producer.flush()  # registered before the first reading is even queued
        return len(sensors)

    def flush(self) -> None:
        self.producer.flush()


@dataclass
class _Queue:
    """Encoded readings waiting for their arrival time."""

    deliver_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    keys: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)


#: Poisoned ("impossible") water values where -42 would not be impossible.
_IMPOSSIBLE_WATER = {"ph": 19.5, "flow_lps": 250_000.0}


class _DomainRun:
    """One department's generator, imperfections, encoder and arrival queue."""

    def __init__(self, cfg: SimConfig, city: City, domain: str, imperfect_rng: np.random.Generator) -> None:
        self.domain = domain
        self.dm = city.domains[domain]
        self.n = len(self.dm)
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _SEED_TAGS[domain]]))
        layout = np.random.default_rng(
            np.random.SeedSequence([cfg.seed, _SEED_TAGS["layout"], _SEED_TAGS[domain]])
        )
        self.gen = GENERATORS[domain](self.dm, cfg.dt_ms / 1000.0, rng)
        self.imp = Imperfector(self.n, cfg.dt_ms, cfg.n_steps, cfg.rates, imperfect_rng)
        self.encoder = BulkEncoder(SCHEMAS[domain])
        self.topic = cfg.topic(domain)
        self.keys = [s.encode("utf-8") for s in self.dm.sensor_ids]
        self.site_table, self.site_idx = _categorical(self.dm.site_ids)
        self.zone_table, self.zone_idx = _categorical(self.dm.zone_ids)
        self.lat = np.asarray(self.dm.lat, dtype=float)
        self.lon = np.asarray(self.dm.lon, dtype=float)
        # Devices are not synchronised: each reports at its own phase within the tick.
        self.phase_ms = layout.integers(0, cfg.dt_ms, self.n)
        self.seq0 = layout.integers(0, 1_000_000, self.n)
        self.queue = _Queue()
        self.generated = 0
        self.emitted = 0
        self.static = self._static_columns(cfg)

    def _static_columns(self, cfg: SimConfig) -> dict[str, Any]:
        a = self.dm.attrs
        if self.domain == "traffic":
            return {
                "lane": np.asarray(a["lane"], dtype=np.int64),
                "direction": _categorical(a["direction"]),
                "interval_s": round(cfg.dt_ms / 1000),
            }
        if self.domain == "water":
            return {"sensor_type": _categorical(a["sensor_type"]), "dma_id": _categorical(a["dma_id"])}
        return {"phase": _categorical(a["phase"])}

    def columns(
        self, out: dict[str, Any], ki: np.ndarray, si: np.ndarray, poison: np.ndarray
    ) -> dict[str, Any]:
        """Domain fields of the kept readings, with NaN / impossible poison applied."""
        cols: dict[str, Any] = {}
        for name, value in self.static.items():
            if isinstance(value, tuple):
                cols[name] = Strings(value[0], value[1][si])
            elif isinstance(value, np.ndarray):
                cols[name] = value[si]
            else:
                cols[name] = value
        nan = poison == 2
        bad = poison == 3
        if self.domain == "traffic":
            count = out["vehicle_count"][ki, si]
            speed = out["mean_speed_kmh"][ki, si]
            present = out["mean_speed_kmh.present"][ki, si]
            occ = out["occupancy_pct"][ki, si]
            occ = np.where(nan, np.nan, occ)
            # impossible: occupancy far above 100 % and a negative vehicle count
            occ = np.where(bad, 250.0, occ)
            count = np.where(bad, -7, count)
            cols.update(
                {
                    "vehicle_count": count,
                    "mean_speed_kmh": Nullable(speed, present),
                    "occupancy_pct": occ,
                }
            )
        elif self.domain == "water":
            for name, present in self.gen.present.items():
                values = out[name][ki, si]
                mask = present[si]
                if name != "pump_on":
                    values = np.where(nan & mask, np.nan, values)
                    # impossible: negative pressure, level, turbidity, chlorine; pH beyond 14; a flow
                    # beyond 100 m3/s (a negative flow is only a reversed one, not impossible)
                    values = np.where(bad & mask, _IMPOSSIBLE_WATER.get(name, -42.0), values)
                cols[name] = Nullable(values, mask)
            # a pump sensor carries a flow too, so every sensor type has a float to poison
        else:
            for name in (
                "voltage_v",
                "current_a",
                "frequency_hz",
                "active_power_kw",
                "reactive_power_kvar",
                "power_factor",
            ):
                cols[name] = out[name][ki, si]
            cols["voltage_v"] = np.where(nan, np.nan, cols["voltage_v"])
            cols["voltage_v"] = np.where(bad, 4000.0, cols["voltage_v"])
            cols["power_factor"] = np.where(bad, 1.8, cols["power_factor"])
        return cols


def _categorical(values: list[str]) -> tuple[list[str], np.ndarray]:
    table = sorted(set(values))
    pos = {v: i for i, v in enumerate(table)}
    return table, np.array([pos[v] for v in values], dtype=np.int64)


ProgressFn = Callable[[float, int, int], None]


class Simulation:
    """A seeded run over one city; ``run`` returns the summary."""

    def __init__(self, config: SimConfig, city: City | None = None) -> None:
        self.cfg = config
        self.city = city or build_city(config.sensors, config.domains, seed=config.seed)
        imperfect = np.random.default_rng(np.random.SeedSequence([config.seed, _SEED_TAGS["imperfect"]]))
        self.runs = [
            _DomainRun(config, self.city, d, imperfect) for d in DOMAIN_NAMES if d in self.city.domains
        ]
        anomaly_rng = np.random.default_rng(np.random.SeedSequence([config.seed, _SEED_TAGS["anomalies"]]))
        self.anomalies = anomaly_mod.plan(
            self.city,
            config.start_ms,
            config.end_ms,
            config.dt_ms,
            config.anomalies_per_hour,
            anomaly_rng,
            label_prefix=f"sim{config.seed}",
        )
        self.labels = [a.label(self.city.domains[a.domain]) for a in self.anomalies]
        self._order = 0
        self.registered = 0

    # -- generation ------------------------------------------------------------------------

    def block_steps(self) -> int:
        return max(1, min(self.cfg.n_steps or 1, math.ceil(BLOCK_READINGS / max(1, self.city.sensor_count))))

    def _generate(self, run: _DomainRun, step0: int, k: int) -> None:
        cfg = self.cfg
        ticks = cfg.start_ms + (step0 + np.arange(k, dtype=np.int64)) * cfg.dt_ms
        drivers = run.gen.drivers(ticks)
        anomaly_mod.apply_drivers(self.anomalies, run.domain, ticks, drivers)
        out = run.gen.derive(ticks, drivers)
        anomaly_mod.apply_outputs(self.anomalies, run.dm, ticks, out)
        keep = run.imp.keep(step0, k)
        run.generated += k * run.n
        ki, si = np.nonzero(keep)
        m = ki.size
        if m == 0:
            return
        true_ms = ticks[ki] + run.phase_ms[si]
        poison = run.imp.poison(m)
        cols = run.columns(out, ki, si, poison)
        cols.update(
            {
                "envelope.sensor_id": Strings(run.dm.sensor_ids, si),
                "envelope.site_id": Strings(run.site_table, run.site_idx[si]),
                "envelope.zone_id": Strings(run.zone_table, run.zone_idx[si]),
                "envelope.domain": run.domain,
                "envelope.event_time": true_ms + run.imp.skew(si),
                "envelope.seq": run.seq0[si] + step0 + ki,
                "envelope.lat": run.lat[si],
                "envelope.lon": run.lon[si],
                "envelope.quality": 0,
            }
        )
        values = run.encoder.encode(m, cols)
        for j in np.flatnonzero(poison == 1).tolist():
            values[j] = values[j][: len(values[j]) // 2]  # a strict prefix never decodes
        delay, dup, dup_delay = run.imp.delays(m, poison == 0, cfg.end_ms - true_ms)
        keys = [run.keys[i] for i in si.tolist()]
        dup_idx = np.flatnonzero(dup)
        deliver = np.concatenate([run.queue.deliver_ms, true_ms + delay, true_ms[dup_idx] + dup_delay])
        order = np.concatenate(
            [run.queue.order, self._order + np.arange(m), self._order + m + np.arange(dup_idx.size)]
        )
        self._order += m + dup_idx.size
        dup_list = dup_idx.tolist()
        all_keys = run.queue.keys + keys + [keys[j] for j in dup_list]
        all_values = run.queue.values + values + [values[j] for j in dup_list]
        idx = np.lexsort((order, deliver))
        ids = idx.tolist()
        run.queue = _Queue(deliver[idx], order[idx], [all_keys[i] for i in ids], [all_values[i] for i in ids])

    def sensors(self) -> list[Sensor]:
        """The run's registry entries (one per sensor), installed before any of its readings."""
        return city_sensors(self.city, self.cfg.start_ms)

    # -- delivery --------------------------------------------------------------------------

    def run(
        self,
        sink: Sink,
        *,
        labels_file: Path | None = None,
        progress: ProgressFn | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> dict[str, Any]:
        """Produce the whole run into ``sink`` and return the summary."""
        cfg = self.cfg
        began = clock()
        labels_out = None
        if labels_file is not None:
            labels_file.parent.mkdir(parents=True, exist_ok=True)
            labels_out = labels_file.open("w", encoding="utf-8")
        label_queue = list(self.labels)
        label_schema = _label_encoder()
        sent = 0
        register = getattr(sink, "register", None)
        self.registered = register(cfg.sensors_topic, self.sensors()) if register else 0

        def deliver_until(until_ms: int | None) -> None:
            nonlocal sent
            while label_queue and (until_ms is None or label_queue[0]["start_time"] < until_ms):
                label = label_queue.pop(0)
                if labels_out is not None:
                    labels_out.write(json.dumps(label, sort_keys=True) + "\n")
                sink.emit(cfg.labels_topic, [label["label_id"].encode()], [label_schema(label)])
            for run in self.runs:
                q = run.queue
                cut = q.deliver_ms.size if until_ms is None else int(np.searchsorted(q.deliver_ms, until_ms))
                if cut == 0:
                    continue
                sink.emit(run.topic, q.keys[:cut], q.values[:cut])
                run.emitted += cut
                sent += cut
                run.queue = _Queue(q.deliver_ms[cut:], q.order[cut:], q.keys[cut:], q.values[cut:])

        try:
            k = self.block_steps()
            for step0 in range(0, cfg.n_steps, k):
                kk = min(k, cfg.n_steps - step0)
                for run in self.runs:
                    self._generate(run, step0, kk)
                block_start = cfg.start_ms + step0 * cfg.dt_ms
                block_end = cfg.start_ms + (step0 + kk) * cfg.dt_ms
                if cfg.speed is None:
                    deliver_until(block_end)
                else:
                    # ~4 deliveries per wall second, each after sleeping until its arrival time
                    chunk = max(1, int(250 * cfg.speed))
                    for t in range(block_start + chunk, block_end + chunk, chunk):
                        t = min(t, block_end)
                        wait = began + (t - cfg.start_ms) / 1000.0 / cfg.speed - clock()
                        if wait > 0:
                            sleep(wait)
                        deliver_until(t)
                if progress is not None:
                    progress(min(0.999, (step0 + kk) / max(1, cfg.n_steps)), block_end, sent)
            deliver_until(None)  # stragglers whose arrival falls after the simulated end
            sink.flush()
        finally:
            if labels_out is not None:
                labels_out.close()
        elapsed = clock() - began
        if progress is not None:
            progress(1.0, cfg.end_ms, sent)
        return self.summary(elapsed)

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        cfg = self.cfg
        per_domain: dict[str, Any] = {}
        for run in self.runs:
            kinds: dict[str, int] = {}
            for a in self.anomalies:
                if a.domain == run.domain:
                    kinds[a.kind] = kinds.get(a.kind, 0) + 1
            per_domain[run.domain] = {
                "topic": run.topic,
                "sensors": run.n,
                "readings_generated": run.generated,
                "readings_sent": run.emitted,
                "imperfections": run.imp.counts.as_dict(),
                "anomalies": kinds,
            }
        total = sum(r.emitted for r in self.runs)
        return {
            "seed": cfg.seed,
            "start_ms": cfg.start_ms,
            "end_ms": cfg.end_ms,
            "interval_ms": cfg.dt_ms,
            "sensors": self.city.sensor_count,
            "domains": per_domain,
            "readings_sent": total,
            "labels": len(self.labels),
            "labels_topic": cfg.labels_topic,
            "registered": self.registered,
            "sensors_topic": cfg.sensors_topic,
            "elapsed_s": round(elapsed_s, 3),
            "events_per_s": round(total / elapsed_s) if elapsed_s > 0 else None,
        }


def _label_encoder() -> Callable[[dict[str, Any]], bytes]:
    return functools.partial(contracts.encode, LABEL_SCHEMA)
