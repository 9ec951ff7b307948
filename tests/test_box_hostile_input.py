"""Anything a box receives over MQTT (a retained config, any command, a signed or forged update) never makes it open
a file the message names, and never raises out of the handler (issue 11, High #2 and the lows).

The handlers are the daemon's own (``ClinicCommands.register`` and ``appliance.updates.attach_to_link`` on a
real :class:`appliance.mqtt.BoxLink`), driven in-process with generated payloads: wrong types, huge, deeply nested,
binary, and strings that are paths of files a careless box would read (``/dev/zero``, ``/etc/passwd``, a FIFO,
a directory, a big file). Every ``open``/``os.open`` in the process is recorded while a message is handled; only
the box's own state folder (and /proc/meminfo, read by the pre-flight) may appear.
"""
from __future__ import annotations

import base64
import builtins
import io
import json
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from appliance.clinic_commands import SIGNED_UPDATES_REQUIRED, make_link
from appliance.daemon import Daemon
from appliance.hardware import SimulationSource, open_hardware
from appliance.jsonl import JsonlWriter
from appliance.protocol import schema
from appliance.protocol import signing
from appliance.protocol.boxconfig import _SECTIONS, describe_keys
from appliance.protocol.commands import COMMANDS
from appliance.updates import attach_to_link
from tests.daemon_helpers import box_config

N2 = 2
ALLOWED_OPEN = ("/proc/meminfo",)


class OpenSpy:
    """Records every path opened through builtins.open, io.open, os.open and pathlib (which goes through io.open)
    while active; the process's other threads are recorded too, which only makes the check stricter."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._saved = (builtins.open, io.open, os.open)

    def __enter__(self) -> "OpenSpy":
        real_open, _, real_os_open = self._saved

        def spy_open(file, *a, **k):
            if isinstance(file, (str, bytes, os.PathLike)):
                with self._lock:
                    self.paths.append(os.fsdecode(file))
            return real_open(file, *a, **k)

        def spy_os_open(path, *a, **k):
            with self._lock:
                self.paths.append(os.fsdecode(path))
            return real_os_open(path, *a, **k)

        builtins.open = io.open = spy_open
        os.open = spy_os_open
        return self

    def __exit__(self, *exc) -> None:
        builtins.open, io.open, os.open = self._saved

    def outside(self, root: Path) -> list[str]:
        root_s = str(root.resolve())
        return [p for p in self.paths
                if not os.path.realpath(p).startswith(root_s + os.sep) and p not in ALLOWED_OPEN]


class Box:
    """The daemon's handlers on the BoxLink ``clinic_commands.make_link`` builds, never started (messages are handed to it
    directly)."""

    def __init__(self, root: Path, *, pinned: bool, key_pem: Path | None) -> None:
        self.root = root
        root.mkdir(parents=True)
        sections = {"updates": {"public_key_file": str(key_pem)}} if pinned else {}
        self.cfg = box_config(root, port=9, **sections)  # the link is built as the daemon builds it, never started
        hw = open_hardware(self.cfg, simulate=True, source=SimulationSource(hypnogram=np.full(2, N2, np.int8)),
                           speed=60.0)
        d = Daemon(self.cfg, hardware=hw)
        d.journal.events_file = JsonlWriter(root / "events.jsonl")  # as the daemon opens it
        d.updates = d.commands.make_update_manager(stages_flowing=d._stages_flowing)
        d.link = make_link(self.cfg, model_versions={})
        d.commands.register(d.link)
        if d.updates is not None:
            attach_to_link(d.updates, d.link)
        self.daemon, self.link = d, d.link

    def close(self) -> None:
        self.daemon.journal.close()
        self.link.outbox.close()


@pytest.fixture(scope="module")
def hostile_files():
    """Files a box must never be made to open: a FIFO (opening it blocks), a directory, a big file, devices."""
    d = Path(tempfile.mkdtemp(prefix="bedtime-hostile-"))
    os.mkfifo(d / "fifo")
    (d / "dir").mkdir()
    with open(d / "big.pem", "wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: 50 MB to read, no disk used
    (d / "key.pem").write_text("-----BEGIN PUBLIC KEY-----\n")
    yield d, [str(d / "fifo"), str(d / "dir"), str(d / "big.pem"), str(d / "key.pem"), "/dev/zero", "/dev/urandom",
              "/etc/passwd", "/proc/no-such-dir/nights", "/proc/self/mem", "../../etc/shadow"]
    import shutil

    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def boxes(hostile_files):
    root = Path(tempfile.mkdtemp(prefix="bedtime-boxes-"))
    signing.generate_keypair(root / "clinic.key", root / "clinic.pub")
    made = {"pinned": Box(root / "pinned", pinned=True, key_pem=root / "clinic.pub"),
            "open": Box(root / "open", pinned=False, key_pem=None)}
    yield made, signing.load_private_key(root / "clinic.key")
    for b in made.values():
        b.close()
    import shutil

    shutil.rmtree(root, ignore_errors=True)


# ---- generated input ------------------------------------------------------------------------------------
KEY_NAMES = sorted({k.split(".", 1)[1] for k, _, _ in describe_keys()} | {"public_key_file", "password_file"})
SECTION_NAMES = sorted(_SECTIONS)


def json_values(paths: list[str]):
    leaves = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
              | st.sampled_from([10**400, -(10**400), 10**4000])  # JSON numbers no float holds
              | st.text(max_size=20) | st.sampled_from(paths))
    return st.recursive(leaves, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c,
                                                                                     max_size=4), max_leaves=12)


def config_docs(paths: list[str]):
    value = json_values(paths) | st.sampled_from(paths) | st.just("x" * 2_000_000)
    section = st.dictionaries(st.sampled_from(KEY_NAMES) | st.text(max_size=8), value, max_size=5)
    return st.dictionaries(st.sampled_from(SECTION_NAMES) | st.text(max_size=8), section | value, max_size=6)


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def raw_payloads():
    return st.one_of(st.binary(max_size=300), st.integers(1_000, 150_000).map(deep),
                     st.integers(1_000, 150_000).map(lambda n: b'{"args": {"reason": ' + deep(n) + b"}}"),
                     st.just(b'{"schema": 1, "config": ' + deep(100_000) + b"}"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_no_received_config_makes_the_box_open_a_file_or_raise(boxes, hostile_files, data):
    made, _key = boxes
    _, paths = hostile_files
    box = made[data.draw(st.sampled_from(sorted(made)), label="box")]
    doc = data.draw(config_docs(paths), label="config")
    payload = data.draw(st.one_of(
        st.just(schema.encode(schema.config_payload(box.cfg.box.id, schema.utc_now(), config=doc,
                                                    config_version="v-hostile"))),
        raw_payloads()), label="payload")
    with OpenSpy() as spy:
        box.link._last_config_digest = None  # every example is a new retained message
        box.link._handle_config(payload)  # raises nothing, whatever the payload
    assert spy.outside(box.root) == [], spy.paths


def _command_bodies(paths: list[str], key, box_id: str):
    args = st.dictionaries(st.sampled_from(["kind", "payload_b64", "manifest", "night", "enabled", "reason"])
                           | st.text(max_size=8), json_values(paths), max_size=4)
    cfg = config_docs(paths).map(lambda d: json.dumps(d).encode())
    signed_update = st.tuples(cfg, st.sampled_from([[box_id], ["box-b"]])).map(
        lambda t: {"kind": "config", "payload_b64": base64.b64encode(t[0]).decode(),
                   "manifest": json.dumps(signing.sign_bytes(t[0], key, kind="config", name="c.json", version="h1",
                                                             boxes=t[1]))})
    forged_manifest = st.tuples(cfg, json_values(paths)).map(
        lambda t: {"kind": "config", "payload_b64": base64.b64encode(t[0]).decode(), "manifest": json.dumps(t[1])})
    body = st.one_of(args, signed_update, forged_manifest).map(
        lambda a: schema.encode(schema.command_payload(schema.utc_now(), a)))
    return st.one_of(body, raw_payloads(),
                     st.sampled_from(paths).map(lambda p: json.dumps({"args": {"reason": p * 200_000}}).encode()),
                     st.sampled_from([b'{"schema": true}', b'{"schema": 1.0}',
                                      b'{"schema": 1, "time_utc": "1970-01-01T00:00:00Z"}']))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_no_received_command_makes_the_box_open_a_file_or_raise(boxes, hostile_files, data):
    made, key = boxes
    _, paths = hostile_files
    box = made[data.draw(st.sampled_from(sorted(made)), label="box")]
    name = data.draw(st.sampled_from(sorted(set(COMMANDS) - {"selftest"})) | st.text(max_size=12), label="command")
    body = data.draw(_command_bodies(paths, key, box.cfg.box.id), label="body")
    with OpenSpy() as spy:
        box.link._handle_command(name, body, None, retained=data.draw(st.booleans(), label="retained"))
    box.daemon._stop.clear()  # a generated `restart` asked the (not running) night to stop
    assert spy.outside(box.root) == [], spy.paths


def test_the_reported_case_dev_zero_key_to_a_pinned_box(boxes, hostile_files):
    """The issue's exact message: an unsigned retained {"updates": {"public_key_file": "/dev/zero"}} to a box with
    a pinned key. It is refused as unsigned before anything in it is looked at. (On the old code the validator read
    /dev/zero: 2.25 GB in a second.)"""
    made, _ = boxes
    box = made["pinned"]
    events = []
    box.link.publish_event = lambda kind, **f: events.append({"kind": kind, **f})  # what would go to the clinic
    try:
        with OpenSpy() as spy:
            box.link._last_config_digest = None
            box.link._handle_config(schema.encode(schema.config_payload(
                box.cfg.box.id, schema.utc_now(), config={"updates": {"public_key_file": "/dev/zero"}},
                config_version="evil-1")))
    finally:
        del box.link.publish_event
    assert "/dev/zero" not in spy.paths
    assert events[-1]["kind"] == "config_rejected" and SIGNED_UPDATES_REQUIRED in events[-1]["error"]


@pytest.mark.broker
def test_hostile_commands_over_the_broker_get_a_bounded_reply(tmp_path, broker, caplog):
    """Over a real mosquitto: a command nested 100k deep, a 10 MB argument, a stale one and a retained one each
    get an error reply (the deep one got none: RecursionError), and no reply or log line carries the 10 MB."""
    import logging

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    caplog.set_level(logging.DEBUG)
    from tests.broker import Recorder, make_box, wait_until

    link = make_box(tmp_path, "box-a", broker.host, broker.port)
    link.on_command("restart", lambda args: {"restarting": False})
    link.on_command("update", lambda args: {"ok": False})
    link.start()
    rec = Recorder(broker.host, broker.port, ["bedtime/v1/box-a/reply/#"])
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="hostile-clinic", protocol=paho.MQTTv5)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        assert link.wait_connected(10)
        deep_body = b'{"args": {"manifest": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
        huge_body = json.dumps({"args": {"reason": "A" * 10_000_000}}).encode()
        stale_body = json.dumps({"schema": 1, "time_utc": "1970-01-01T00:00:00Z", "args": {}}).encode()
        sent = [("update", deep_body, False, "bad_args"), ("restart", huge_body, False, "bad_payload"),
                ("restart", stale_body, False, "bad_payload")]
        for name, b, retain, _ in sent:
            pub.publish(f"bedtime/v1/box-a/cmd/{name}", b, qos=1, retain=retain).wait_for_publish(30)
        assert rec.wait_for(lambda r: len(r.of("/reply/update")) + len(r.of("/reply/restart")) >= 3, 60), rec.messages
        replies = rec.of("/reply/update") + rec.of("/reply/restart")
        assert sorted(r["error"]["code"] for r in replies) == sorted(c for *_, c in sent)
        assert all(not r["ok"] and len(json.dumps(r)) < 2_000 for r in replies)
        assert max(len(r.getMessage()) for r in caplog.records) < 2_000  # nor any log line
        # a retained command would run again at every connect (a retained restart: a restart loop): refused
        pub.publish("bedtime/v1/box-a/cmd/restart", json.dumps({"args": {}}).encode(), qos=1,
                    retain=True).wait_for_publish(10)
        link.stop()
        n = len(rec.of("/reply/restart"))
        link2 = make_box(tmp_path, "box-a", broker.host, broker.port)
        ran = []
        link2.on_command("restart", lambda args: ran.append(args) or {"restarting": True})
        link2.start()
        try:
            assert wait_until(lambda: len(rec.of("/reply/restart")) > n, 20)
            last = rec.of("/reply/restart")[-1]
            assert not last["ok"] and "retained" in last["error"]["message"] and ran == []
        finally:
            link2.stop()
    finally:
        pub.publish("bedtime/v1/box-a/cmd/restart", b"", qos=1, retain=True).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        rec.close()
        link.stop()
