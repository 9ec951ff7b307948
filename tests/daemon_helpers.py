"""Helpers for the daemon's end-to-end and fault tests: the real pipeline parts, a short night with the scripted
nightmare loop, an MQTT subscriber on the real broker, and a box configuration in a temporary directory."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from appliance.protocol.stages import Stage


def pipeline_parts(hypnogram: np.ndarray | None = None, **extra):
    """The real stager and loop model (from models/), plus any parts given; returns (PipelineParts, description).

    (Until the models landed, these tests ran on test-only stand-ins; they are gone: a missing model file is now a
    failure with the model layer's own clear error.)
    """
    from appliance.daemon import PipelineParts
    from appliance.loop_model import LoopDetector
    from appliance.stager import Stager

    return PipelineParts(stager=Stager(), loop_detector=LoopDetector(), **extra), "real stager, real loop model"


def short_night_with_loop(*, before_epochs: int = 24, after_epochs: int = 20) -> tuple[np.ndarray, slice]:
    """A short night: settle into N2, a REM period that turns into the scripted loop, then N2 again."""
    from appliance.demo import LOOP_PATTERN

    W, N1, N2 = int(Stage.W), int(Stage.N1), int(Stage.N2)
    head = [W] * 4 + [N1] * 2 + [N2] * (before_epochs - 6)
    h = np.array(head + list(LOOP_PATTERN) + [N2] * after_epochs, dtype=np.int8)
    return h, slice(len(head), len(head) + len(LOOP_PATTERN))


class Subscriber:
    """A client on the real broker (a parent's phone, or a clinic), optionally with a persistent session so it
    keeps its subscription and queued QoS 1 messages across a broker restart."""

    def __init__(self, host: str, port: int, topics: list[str], *, client_id: str, persistent: bool = False) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.messages: list[tuple[str, dict, float]] = []
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600

        def on_connect(client, userdata, flags, rc, properties):
            if not (persistent and flags.session_present):
                client.subscribe([(t, 1) for t in topics])
            else:
                self._subscribed.set()

        def on_subscribe(client, userdata, mid, rcs, properties):
            self._subscribed.set()

        def on_message(client, userdata, msg):
            self.messages.append((msg.topic, json.loads(msg.payload), time.monotonic()))

        self.client.on_connect, self.client.on_subscribe, self.client.on_message = on_connect, on_subscribe, on_message
        self.client.connect(host, port, clean_start=not persistent, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise RuntimeError("subscriber could not subscribe")

    def payloads(self, channel: str) -> list[dict]:
        return [p for t, p, _ in self.messages if t.endswith("/" + channel)]

    def wait_for(self, channel: str, n: int, timeout_s: float) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while len(self.payloads(channel)) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.payloads(channel)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def box_config(tmp: Path, *, port: int | None, box_id: str = "box-a", **sections) -> "object":
    from appliance.protocol.boxconfig import validate_config

    from appliance.demo import DEMO_BREATHER

    doc = {"box": {"id": box_id, "state_dir": str(tmp / "state")}, "recording": {"dir": str(tmp / "nights")},
           "mqtt": {"host": "127.0.0.1", "port": port} if port else {"enabled": False},
           "breather": dict(DEMO_BREATHER)}
    for k, v in sections.items():
        doc.setdefault(k, {}).update(v)
    return validate_config(doc)
