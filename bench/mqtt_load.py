"""Fleet load: N simulated boxes on a loopback mosquitto while the fleet ingest consumes everything.

Each simulated box is a real MQTT v5 connection (paho-mqtt) with its own client id and last will,
publishing the same v1 payloads a box sends (``stage`` each "epoch", ``telemetry``, QoS 1 ``alert``),
with time accelerated (an epoch every ``stage_period_s`` instead of 30 s). The boxes run in a few
worker processes, each driving hundreds of paho clients from one selector loop through paho's
external-event-loop API (``loop_read``/``loop_write``/``loop_misc``): paho's one-thread-per-client
``loop_start`` would need 1,000 threads. The clinic side is :class:`appliance.fleet.ingest.FleetIngest`
(what ``bedtime-fleet`` and the web console use) in a shared-subscription group.

Measured: connections up, messages/s through the ingest, end-to-end alert latency (box publish ->
ingest callback, same machine clock) p50/p99, and QoS 1 alerts lost (sent and acknowledged by the
broker, never seen by the ingest). The baseline is the same per-box load from 10 boxes, run first in
the same process. Bounded: fixed box count, fixed duration, loopback only.
"""
from __future__ import annotations

import heapq
import multiprocessing as mp
import os
import queue
import random
import resource
import selectors
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LOOPBACK = "127.0.0.1"


def _raise_fd_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, want)) if hard != resource.RLIM_INFINITY else max(soft, want)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(frozen=True)
class Load:
    boxes: int
    duration_s: float
    stage_period_s: float = 1.0      # one 30-s epoch per second: 30x real time
    telemetry_period_s: float = 5.0
    alerts_per_box: int = 2
    workers: int = 2


def _box_worker(box_ids: list[str], port: int, load: Load, t_start: float, out: "mp.Queue") -> None:
    """One worker process: connect its boxes, publish on schedule until the end, report counts."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from appliance.epoch import Epoch
    from appliance.protocol import schema
    from appliance.protocol.transport import set_tcp_nodelay

    _raise_fd_limit(len(box_ids) + 256)
    rng = random.Random(hash(box_ids[0]) & 0xFFFF)
    sel = selectors.DefaultSelector()
    clients: list[paho.Client] = []
    acked: dict[int, set] = {}
    alert_mid: dict[tuple[int, int], int] = {}
    connected = [False] * len(box_ids)
    connect_failures = 0

    for i, box_id in enumerate(box_ids):
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{box_id}", protocol=paho.MQTTv5)
        c.will_set(schema.topic(box_id, "status"), schema.encode(schema.status_payload(
            box_id, schema.utc_now(), state="offline", firmware_version="bench", model_versions={})), qos=1, retain=True)

        def on_connect(cl, ud, flags, rc, props, i=i):
            connected[i] = not rc.is_failure

        def on_publish(cl, ud, mid, rc, props, i=i):
            if not rc.is_failure:
                acked.setdefault(i, set()).add(mid)

        c.on_connect, c.on_publish = on_connect, on_publish
        try:
            c.connect(LOOPBACK, port, keepalive=60)
        except OSError:
            connect_failures += 1
            clients.append(None)
            continue
        set_tcp_nodelay(c)  # as BoxLink does
        sel.register(c.socket(), selectors.EVENT_READ, c)
        clients.append(c)

    def pump(timeout: float) -> None:
        for key, _ in sel.select(timeout):
            key.data.loop_read()
        for c in clients:
            if c is not None and c.want_write():
                c.loop_write()

    deadline = time.monotonic() + 30
    while not all(connected[i] for i, c in enumerate(clients) if c is not None) and time.monotonic() < deadline:
        pump(0.05)
    for i, c in enumerate(clients):
        if c is not None and connected[i]:
            c.publish(schema.topic(box_ids[i], "status"), schema.encode(schema.status_payload(
                box_ids[i], schema.utc_now(), state="recording", firmware_version="bench",
                model_versions={"stager": "bench"})), qos=1, retain=True)

    # Schedule: (due_monotonic, box index, kind). Phases are spread so boxes do not publish in lock step.
    while time.time() < t_start:
        pump(min(0.05, max(0.0, t_start - time.time())))
    t0 = time.monotonic()
    end = t0 + load.duration_s
    heap: list[tuple[float, int, str]] = []
    for i in range(len(box_ids)):
        heapq.heappush(heap, (t0 + rng.uniform(0, load.stage_period_s), i, "stage"))
        heapq.heappush(heap, (t0 + rng.uniform(0, load.telemetry_period_s), i, "telemetry"))
        for _ in range(load.alerts_per_box):
            heapq.heappush(heap, (t0 + rng.uniform(0.1, load.duration_s * 0.9), i, "alert"))
    sent = {"stage": 0, "telemetry": 0, "alert": 0}
    epoch_idx = [0] * len(box_ids)
    alert_seq = [0] * len(box_ids)
    probs = np.array([0.05, 0.1, 0.6, 0.15, 0.1])
    last_misc = time.monotonic()
    while heap:
        due, i, kind = heap[0]
        now = time.monotonic()
        if due > now:
            pump(min(0.02, due - now))
            if now - last_misc > 1.0:
                for c in clients:
                    if c is not None:
                        c.loop_misc()
                last_misc = now
            continue
        heapq.heappop(heap)
        c, box_id = clients[i], box_ids[i]
        if c is None or not connected[i]:
            continue
        now_utc = schema.utc_now()
        if kind == "stage":
            epoch_idx[i] += 1
            e = Epoch(index=epoch_idx[i], start_sample=0, end_time_s=30.0 * epoch_idx[i], stage_probs=probs, p_loop=0.02)
            c.publish(schema.topic(box_id, "stage"), schema.encode(schema.stage_payload(box_id, now_utc, e)), qos=0)
            if due + load.stage_period_s < end:
                heapq.heappush(heap, (due + load.stage_period_s, i, "stage"))
        elif kind == "telemetry":
            c.publish(schema.topic(box_id, "telemetry"), schema.encode(schema.telemetry_payload(
                box_id, now_utc, signal_quality_percent=90.0, cpu_percent=4.0, temperature_c=47.0)), qos=0, retain=True)
            if due + load.telemetry_period_s < end:
                heapq.heappush(heap, (due + load.telemetry_period_s, i, "telemetry"))
        else:
            alert_seq[i] += 1
            p = schema.alert_payload(box_id, now_utc, title="Nightmare loop", message="Loop did not settle.",
                                     severity="warning", kind="loop_persisted", outbox_id=f"bench-{box_id}",
                                     seq=alert_seq[i], bench_sent_ns=time.time_ns())
            info = c.publish(schema.topic(box_id, "alert"), schema.encode(p), qos=1)
            alert_mid[(i, alert_seq[i])] = info.mid
        sent[kind] += 1
    # Let QoS 1 acknowledgements come back.
    drain_end = time.monotonic() + 5
    while time.monotonic() < drain_end and any(mid not in acked.get(i, ()) for (i, _), mid in alert_mid.items()):
        pump(0.05)
    acked_alerts = sorted((box_ids[i], s) for (i, s), mid in alert_mid.items() if mid in acked.get(i, ()))
    for c in clients:
        if c is not None:
            c.disconnect()
            c.loop_write()
    out.put({"sent": sent, "connected": sum(connected), "connect_failures": connect_failures,
             "acked_alerts": acked_alerts, "alerts_sent": len(alert_mid)})


def run_load(load: Load, *, broker=None) -> dict:
    """Run one load against a private loopback mosquitto; return the measurements."""
    from appliance.fleet.ingest import FleetIngest
    from appliance.protocol import schema

    own_broker = broker is None
    if own_broker:
        from tests.broker import MosquittoBroker, make_pki
        tmp = Path(tempfile.mkdtemp(prefix="bedtime-bench-mqtt-"))
        _raise_fd_limit(4 * load.boxes + 512)  # mosquitto inherits it
        broker = MosquittoBroker(tmp / "broker", make_pki(tmp / "pki"),
                                 extra_conf="max_connections -1\nmax_queued_messages 100000\nset_tcp_nodelay true\n").start()
    latencies_ms: list[float] = []
    seen_alerts: set[tuple[str, int]] = set()
    lock = threading.Lock()

    def on_alert(box_id: str, p: dict) -> None:
        lat = (time.time_ns() - p["bench_sent_ns"]) / 1e6
        with lock:
            latencies_ms.append(lat)
            seen_alerts.add((box_id, p["seq"]))

    stage_lat_ms: list[float] = []

    def on_stage(box_id: str, p: dict) -> None:
        # stage payloads carry only time_utc (ms resolution): good enough for a QoS 0 latency figure
        stage_lat_ms.append((time.time() - schema.parse_iso_utc(p["time_utc"]).timestamp()) * 1e3)

    ingest = FleetIngest(LOOPBACK, broker.port, group="bench-fleet", on_alert=on_alert, on_stage=on_stage).start()
    try:
        ids = [f"bench-{i:04d}" for i in range(load.boxes)]
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        t_start = time.time() + 2.0 + load.boxes / 400  # time for every worker to connect its boxes
        procs = [ctx.Process(target=_box_worker, args=(ids[w::load.workers], broker.port, load, t_start, q))
                 for w in range(load.workers)]
        for p in procs:
            p.start()
        while time.time() < t_start:
            time.sleep(0.05)
        base = dict(ingest.stats)
        cpu0, wall0 = os.times(), time.monotonic()
        time.sleep(load.duration_s)
        msgs = sum(ingest.stats[k] - base.get(k, 0) for k in ("stage", "telemetry", "alert"))
        wall = time.monotonic() - wall0
        cpu1 = os.times()
        results = []
        give_up = time.monotonic() + 120
        while len(results) < len(procs):
            try:
                results.append(q.get(timeout=1.0))
            except queue.Empty:
                if time.monotonic() > give_up or sum(p.is_alive() for p in procs) < len(procs) - len(results):
                    raise RuntimeError("a load worker died or hung; see its stderr") from None
        for p in procs:
            p.join(30)
        time.sleep(0.5)  # the last alerts through the ingest
        online = sum(1 for v in ingest.boxes.values() if v.box_id.startswith("bench-") and v.state == "recording")
    finally:
        ingest.stop()
        if own_broker:
            broker.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    acked = {tuple(a) for r in results for a in r["acked_alerts"]}
    lat = np.array(latencies_ms) if latencies_ms else np.array([np.nan])
    return {
        "boxes": load.boxes,
        "connected": sum(r["connected"] for r in results),
        "connect_failures": sum(r["connect_failures"] for r in results),
        "online_in_view": online,
        "sent": {k: sum(r["sent"][k] for r in results) for k in ("stage", "telemetry", "alert")},
        "ingest_msgs_per_s": msgs / wall,
        "ingest_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        "wall_s": wall,
        "alerts_acked": len(acked),
        "alerts_seen": len(seen_alerts),
        "alerts_lost": len(acked - seen_alerts),
        "latency_p50_ms": float(np.percentile(lat, 50)),
        "latency_p99_ms": float(np.percentile(lat, 99)),
        "duplicates": ingest.stats["duplicates"],
        "stage_latency_p50_ms": float(np.percentile(stage_lat_ms, 50)) if stage_lat_ms else float("nan"),
        "stage_latency_p99_ms": float(np.percentile(stage_lat_ms, 99)) if stage_lat_ms else float("nan"),
    }


def run(*, quick: bool = False) -> str:
    n = 100 if quick else 1000
    duration = 5.0 if quick else 15.0
    base = run_load(Load(boxes=10, duration_s=5.0, workers=1))
    half = run_load(Load(boxes=n, duration_s=duration, workers=2, stage_period_s=2.0))
    full = run_load(Load(boxes=n, duration_s=duration, workers=2, stage_period_s=1.0))
    load1 = os.getloadavg()[0]
    rows = [("baseline: 10 boxes, 30x", base), (f"{n} boxes, 15x", half), (f"{n} boxes, 30x", full)]
    lines = [
        "## MQTT fleet load (bench/mqtt_load.py)",
        "",
        "Simulated boxes (real MQTT v5 connections: paho clients, 2 worker processes) publish a stage per epoch "
        "with time accelerated 15x or 30x (an epoch every 2 s or 1 s), telemetry every 5 s and 2 QoS 1 alerts "
        "each, to a private loopback mosquitto 2.x; `FleetIngest` (what `bedtime-fleet` and the console use) "
        "consumes everything through a shared subscription and validates every payload. Baseline: the same "
        "per-box load from 10 boxes, in the same process. Latency: from the simulated box's publish call to the "
        "ingest callback, same machine clock (alerts: ns stamps; stages: their ms `time_utc`).",
        "",
        "| run | connections up | in fleet view | msgs/s through ingest | ingest CPU (s/s) | alerts acked "
        "| alerts lost | alert latency p50 / p99 | stage latency p50 / p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['connected']} | {r['online_in_view']} | {r['ingest_msgs_per_s']:.0f} "
            f"| {r['ingest_cpu_s'] / r['wall_s']:.2f} | {r['alerts_acked']} | {r['alerts_lost']} "
            f"| {r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f} ms "
            f"| {r['stage_latency_p50_ms']:.1f} / {r['stage_latency_p99_ms']:.1f} ms |")
    lost = half["alerts_lost"] + full["alerts_lost"]
    acked = half["alerts_acked"] + full["alerts_acked"]
    lines += [
        "",
        f"- Goal {n} connections: {'met' if min(half['connected'], full['connected']) == n else 'NOT met'} "
        f"({full['connected']} up, {full['connect_failures']} failed). QoS 1 alerts lost: {lost} of {acked} "
        f"acknowledged by the broker (goal 0).",
        f"- Throughput at 30x: {full['ingest_msgs_per_s'] / max(base['ingest_msgs_per_s'], 1e-9):.0f}x the "
        f"10-box baseline's for {n // 10}x the boxes; alert p99 latency "
        f"{full['latency_p99_ms'] / max(base['latency_p99_ms'], 1e-9):.0f}x the baseline's.",
        f"- The machine is a shared {os.cpu_count()}-core VM (1-min load average {load1:.1f} at the end of this "
        "run): broker, ingest and simulated boxes compete with other work for the CPU, and the latency tail "
        "follows that load from run to run. Real time is 1/30 of the 30x message rate.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys
    print(run(quick="--quick" in sys.argv))
