"""Every file ``bedtime-fleet`` reads from its command line, hostile: one line on stderr, exit status 2, nothing written.

A FIFO nobody writes to, ``/dev/zero``, a folder, a dangling link, a sparse file over the cap, binary bytes, text
that is no config/key/manifest, JSON or TOML nested thousands deep, an empty file: each subcommand that takes a
file is run in-process (``appliance.fleet.cli.main``) with one of these drawn by Hypothesis, and must refuse it in
one line naming the file, never hang (bounded by the timeout), never print a traceback, and leave nothing behind:
no manifest (``sign``), no database or rollout row (``rollout``, ``serve``), ``--out`` unchanged (``family-acl``).
Commands that reach the broker are pointed at a port nobody listens on, so refusing the file *before* connecting is
exit 2 with a message about the file, where connecting first would be exit 3.

Before this test: push-config, list --password-file, sign (file, --key, --card), rollout --manifest, family-acl
--base and serve's key files hung on a FIFO or read /dev/zero without end; a deeply nested manifest was a
RecursionError traceback; ``--db`` naming a FIFO hung, and naming a device chmod-ed it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from appliance.fleet import cli as fleet_cli
from appliance.fleet.broker_acl import MAX_BASE_BYTES
from appliance.protocol import signing
from appliance.protocol.userfiles import MAX_KEY_FILE_BYTES
from appliance.protocol.updates import MAX_CONFIG_PAYLOAD_BYTES, MAX_MANIFEST_CHARS, MAX_PAYLOAD_BYTES
from tests.broker import free_port
from tests.hostile_files import hostile_spec, make_hostile

pytestmark = pytest.mark.timeout(120)  # a hang is a failure, not a stuck run

ALL = ("fifo", "dev_zero", "folder", "dangling", "oversize", "binary", "text", "nested_json", "nested_toml",
       "huge_number_json", "huge_number_toml", "empty")
#: What is bad for a file whose content is not parsed (a payload, a password, an ACL to copy).
NOT_A_FILE = ("fifo", "dev_zero", "folder", "dangling", "oversize")

HOSTILE = settings(max_examples=40, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                          HealthCheck.data_too_large])


def run(argv: list[str]) -> tuple[int, str, str]:
    """``bedtime-fleet argv`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = fleet_cli.main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


def assert_refused(rc: int, err: str, *, about: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].strip(), err
    assert about in lines[0], (about, err)


@pytest.fixture(scope="module")
def clinic(tmp_path_factory) -> dict:
    """A signing keypair, a config the box accepts, a model with its card, and their manifests."""
    d = tmp_path_factory.mktemp("clinic")
    signing.generate_keypair(d / "k.key", d / "k.pub")
    key = signing.load_private_key(d / "k.key")
    cfg = d / "ok.json"
    cfg.write_text(json.dumps({"telemetry": {"interval_s": 30.0}}))
    model = d / "m.tflite"
    model.write_bytes(b"TFL3 model bytes")
    card = d / "card.json"
    card.write_text(json.dumps({"sha256": hashlib.sha256(model.read_bytes()).hexdigest()}))
    manifest = signing.sign_file(cfg, key, kind="config", version="c1", boxes=["b1"], out=d / "ok.sig.json")
    return {"key": d / "k.key", "pub": d / "k.pub", "config": cfg, "model": model, "card": card,
            "manifest": manifest}


@contextlib.contextmanager
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def _written(folder: Path, hostile: Path) -> list[str]:
    """Files in ``folder`` other than the hostile one (nothing may be left behind)."""
    return sorted(p.name for p in folder.iterdir() if p.name != hostile.name and p.name != "no-such-file")


# ---- push-config and list: refused before connecting -----------------------------------------------------
@HOSTILE
@given(spec=hostile_spec(ALL), suffix=st.sampled_from([".json", ".toml"]))
def test_push_config_refuses_a_hostile_config_before_connecting(spec, suffix):
    with scratch() as d:
        f = make_hostile(d, spec, cap=MAX_CONFIG_PAYLOAD_BYTES, suffix=suffix)
        rc, out, err = run(["--host", "127.0.0.1", "--port", str(free_port()), "push-config", str(f), "--box", "b1"])
        assert_refused(rc, err, about=str(f))
        assert "pushed" not in out


@HOSTILE
@given(spec=hostile_spec(NOT_A_FILE + ("binary", "empty")))
def test_a_hostile_password_file_is_refused_before_connecting(spec):
    with scratch() as d:
        f = make_hostile(d, spec, cap=MAX_KEY_FILE_BYTES, suffix=".pw")
        for argv in (["--password-file", str(f), "list"], ["list", "--password-file", str(f)]):
            rc, _out, err = run(["--host", "127.0.0.1", "--port", str(free_port()), *argv])
            assert_refused(rc, err, about=f"--password-file {f}")


# ---- sign: the file, --key, --card, a model payload; never a manifest -------------------------------------
@HOSTILE
@given(spec=hostile_spec(ALL), which=st.sampled_from(["config", "key", "card"]))
def test_sign_refuses_hostile_files_and_writes_no_manifest(clinic, spec, which):
    with scratch() as d:
        cap = {"config": MAX_CONFIG_PAYLOAD_BYTES, "key": MAX_KEY_FILE_BYTES, "card": MAX_MANIFEST_CHARS}[which]
        f = make_hostile(d, spec, cap=cap)
        out = d / "out.sig.json"
        if which == "config":
            argv = ["sign", str(f), "--kind", "config", "--key", str(clinic["key"])]
        elif which == "key":
            argv = ["sign", str(clinic["config"]), "--kind", "config", "--key", str(f)]
        else:
            argv = ["sign", str(clinic["model"]), "--kind", "model", "--key", str(clinic["key"]), "--card", str(f)]
        rc, _out, err = run(argv + ["--version", "v1", "--box", "b1", "--out", str(out)])
        assert_refused(rc, err, about=str(f))
        assert _written(d, f) == []


@HOSTILE
@given(spec=hostile_spec(NOT_A_FILE))
def test_sign_refuses_a_hostile_model_and_writes_no_manifest(clinic, spec):
    with scratch() as d:
        f = make_hostile(d, spec, cap=MAX_PAYLOAD_BYTES, suffix=".tflite")
        rc, _out, err = run(["sign", str(f), "--kind", "model", "--key", str(clinic["key"]), "--card",
                             str(clinic["card"]), "--version", "v1", "--box", "b1", "--out", str(d / "out.sig.json")])
        assert_refused(rc, err, about=str(f))
        assert _written(d, f) == []


# ---- rollout: a hostile manifest or payload creates no database and no rollout row -------------------------
@HOSTILE
@given(spec=hostile_spec(ALL), which=st.sampled_from(["manifest", "payload"]))
def test_rollout_refuses_hostile_files_before_touching_the_database(clinic, spec, which):
    if which == "payload" and spec[0] not in NOT_A_FILE:
        spec = ("fifo", None)  # any bytes are a payload (the box checks the signature); only a non-file is bad
    with scratch() as d:
        if which == "manifest":
            f = make_hostile(d, spec, cap=MAX_MANIFEST_CHARS)
            argv = [str(clinic["config"]), "--manifest", str(f)]
        else:
            f = make_hostile(d, spec, cap=MAX_CONFIG_PAYLOAD_BYTES)
            argv = [str(f), "--manifest", str(clinic["manifest"])]
        db = d / "db" / "fleet.db"
        rc, _out, err = run(["--host", "127.0.0.1", "--port", str(free_port()), "rollout", *argv,
                             "--kind", "config", "--canary", "b1", "--db", f"sqlite:///{db}"])
        assert_refused(rc, err, about=str(f))
        assert not db.parent.exists()


# ---- family-acl: --out untouched ----------------------------------------------------------------------------
@HOSTILE
@given(spec=hostile_spec(NOT_A_FILE + ("binary",)))
def test_family_acl_refuses_a_hostile_base_and_leaves_out_untouched(spec):
    with scratch() as d:
        f = make_hostile(d, spec, cap=MAX_BASE_BYTES, suffix=".conf")
        out = d / "bedtime.acl"
        out.write_text("# the ACL in use\n")
        rc, stdout, err = run(["family-acl", "--family", "a=b1", "--base", str(f), "--out", str(out)])
        assert_refused(rc, err, about=f"--base {f}")
        assert out.read_text() == "# the ACL in use\n" and stdout == ""
        assert _written(d, f) == ["bedtime.acl"]


# ---- serve: its key files, refused before the database or the web app -----------------------------------------
@HOSTILE
@given(data=st.data(), option=st.sampled_from(["--secret-file", "--signing-key", "--public-key"]))
def test_serve_refuses_hostile_key_files_before_starting(clinic, monkeypatch, data, option):
    import uvicorn

    def no_serving(*a, **k):
        raise AssertionError("serve started with a hostile key file")

    monkeypatch.setattr(uvicorn, "run", no_serving)
    # a session key is any text; a PEM key file must hold a PEM key
    spec = data.draw(hostile_spec(NOT_A_FILE + ("binary", "empty") if option == "--secret-file" else ALL))
    with scratch() as d:
        f = make_hostile(d, spec, cap=MAX_KEY_FILE_BYTES, suffix=".key")
        files = {"--secret-file": d / "session.key", "--signing-key": clinic["key"], "--public-key": clinic["pub"]}
        files[option] = f
        db = d / "db" / "fleet.db"
        argv = ["serve", "--no-mqtt", "--db", f"sqlite:///{db}"]
        for opt, path in files.items():
            argv += [opt, str(path)]
        rc, _out, err = run(argv)
        assert_refused(rc, err, about=str(f))
        assert not db.parent.exists()


# ---- --db: a FIFO hung SQLite; a device was chmod-ed --------------------------------------------------------------
@HOSTILE
@given(spec=hostile_spec(("fifo", "folder", "binary")))  # never a device here: the old code chmod-ed it
def test_a_hostile_database_file_is_one_line(spec):
    with scratch() as d:
        f = make_hostile(d, spec, cap=0, suffix=".db")
        if f.is_file():
            f.chmod(0o600)  # otherwise "readable by others: set to 0600" is logged too (a second, fair line)
        rc, _out, err = run(["user", "list", "--db", f"sqlite:///{f}"])
        assert_refused(rc, err, about=f"--db sqlite:///{f}")


# ---- files written where a FIFO or a file is in the way ---------------------------------------------------
def test_sign_replaces_a_fifo_at_out_instead_of_waiting_for_a_reader(clinic, tmp_path):
    out = tmp_path / "c.sig.json"
    os.mkfifo(out)
    rc, stdout, err = run(["sign", str(clinic["config"]), "--kind", "config", "--key", str(clinic["key"]),
                           "--version", "v1", "--box", "b1", "--out", str(out)])
    assert rc == 0, err
    assert out.is_file() and json.loads(out.read_text())["version"] == "v1"


def test_keys_replaces_a_fifo_at_the_public_key_and_refuses_a_file_as_dir(tmp_path):
    os.mkfifo(tmp_path / "fleet-signing.pub")
    rc, _out, err = run(["keys", "--dir", str(tmp_path)])
    assert rc == 0, err
    signing.load_public_key((tmp_path / "fleet-signing.pub").read_bytes())
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    rc, _out, err = run(["keys", "--dir", str(not_a_dir)])
    assert_refused(rc, err, about=str(not_a_dir))


def test_sign_with_an_encrypted_key_and_no_passphrase_is_one_line(clinic, tmp_path, monkeypatch):
    """It was a TypeError traceback out of cryptography."""
    monkeypatch.delenv(signing.PASSPHRASE_ENV, raising=False)
    signing.generate_keypair(tmp_path / "e.key", tmp_path / "e.pub", passphrase=b"open sesame")
    rc, _out, err = run(["sign", str(clinic["config"]), "--kind", "config", "--key", str(tmp_path / "e.key"),
                         "--version", "v1", "--box", "b1", "--out", str(tmp_path / "out.sig.json")])
    assert_refused(rc, err, about=signing.PASSPHRASE_ENV)
    assert not (tmp_path / "out.sig.json").exists()
