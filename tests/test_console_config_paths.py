"""The config editor never reads a file a config names, and never tells whether a path exists on the
console host (issue 11, High #2, console side).

Proof by the interpreter's own audit hook (PEP 578): every ``open()`` in the process is recorded while the
console handles the request, and no path named in the submitted config may appear. Paths are generated
with hypothesis (existing files, devices, folders, missing ones, odd text), and for each the answer must
be the same as for a path that certainly does not exist.
"""
from __future__ import annotations

import os
import sys
import threading

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.fleet.configcheck import MAX_PATH_CHARS, path_keys, validate_offline
from appliance.protocol import signing
from tests.console_helpers import add_staff, console_settings, create_app, csrf_of, login

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

_opened: list[str] = []
_recording = threading.Event()


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _recording.is_set() and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # cannot be removed; it records only while _recording is set


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("console-host")
    signing.generate_keypair(d / "real.key", d / "real.pub")  # a valid Ed25519 key: the old check passed it
    (d / "secret.txt").write_text("console-host secret\n")
    return d


@pytest.fixture
def console(tmp_path):
    # No channel: a config that passes validation is answered "not connected" (503), one that does not
    # with 400; so the status itself would be the oracle if validation depended on the file.
    app = create_app(console_settings(f"sqlite:///{tmp_path}/fleet.db", tmp_path))
    add_staff(app.state.db)
    app.state.db.set_box_online("b1", True)
    with TestClient(app) as client:
        login(client, "olivia")
        client.app_ref = app
        yield client
    app.state.db.close()


def push(client, doc_text: str):
    token = csrf_of(client.get("/boxes/b1/config").text)
    _opened.clear()
    _recording.set()
    try:
        r = client.post("/boxes/b1/config", data={"config_json": doc_text, "version": "v1", "csrf_token": token})
    finally:
        _recording.clear()
    return r, list(_opened)


def _doc(dotted: str, value: str) -> str:
    import json

    section, key = dotted.split(".", 1)
    return json.dumps({section: {key: value}})


def _answer(r, path: str) -> tuple[int, str]:
    """The response with the path itself taken out (it is echoed back in the editor's text area)."""
    import html as html_mod

    text = html_mod.unescape(r.text).replace(path, "<PATH>")
    return r.status_code, text.split('name="csrf_token"')[0][-4000:]


def test_public_key_file_is_not_read_and_gives_no_oracle(console, files):
    """The reported case: ``updates.public_key_file`` was read (without bound: /dev/zero) and its
    error said whether the path existed."""
    answers = {}
    for path in (str(files / "real.pub"), str(files / "secret.txt"), "/dev/zero", str(files),
                 str(files / "missing.pub")):
        r, opened = push(console, _doc("updates.public_key_file", path))
        assert path not in opened, f"the console opened {path}"
        answers[path] = _answer(r, path)
    assert len({a[0] for a in answers.values()}) == 1, {p: a[0] for p, a in answers.items()}
    assert len(set(answers.values())) == 1


@pytest.mark.parametrize("dotted", path_keys())
def test_no_path_key_makes_the_console_open_its_file(console, files, dotted):
    target = str(files / "secret.txt")
    r, opened = push(console, _doc(dotted, target))
    assert target not in opened
    missing = str(files / "missing.txt")
    r2, opened2 = push(console, _doc(dotted, missing))
    assert missing not in opened2
    assert _answer(r, target) == _answer(r2, missing)


paths = st.one_of(
    st.sampled_from(["/dev/zero", "/dev/urandom", "/etc/passwd", "/proc/self/environ", "/", "/root/.ssh/id_rsa",
                     "/nonexistent/x", "relative/x", "~/x", "/tmp"]),
    st.text(min_size=1, max_size=60).map(lambda t: "/" + t),
    st.integers(MAX_PATH_CHARS - 2, MAX_PATH_CHARS + 2).map(lambda n: "/" + "a" * (n - 1)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dotted=st.sampled_from(path_keys()), path=paths)
def test_generated_paths_are_never_opened_and_answer_alike(console, dotted, path):
    r, opened = push(console, _doc(dotted, path))
    assert path not in opened, f"the console opened {path}"
    assert r.status_code in (400, 503), r.status_code
    # The same answer as for a path of the same length and form that certainly does not exist here.
    n = len(path)
    fixed = ("/nonexistent/" + "p" * n)[:n] if n >= 13 else "/" + "q" * (n - 1)
    if path.isprintable():
        assert push(console, _doc(dotted, fixed))[0].status_code == r.status_code
    else:
        assert r.status_code == 400 and "control characters" in r.text


def test_offline_validator_still_refuses_what_the_box_refuses():
    from appliance.protocol.boxconfig import ConfigError

    with pytest.raises(ConfigError, match="tls_key"):
        validate_offline({"mqtt": {"tls_cert": "/etc/bedtime/client.crt"}})  # a cert needs its key
    with pytest.raises(ConfigError, match="updates.public_key_file"):
        validate_offline({"updates": {"public_key_file": "/a" * MAX_PATH_CHARS}})
    with pytest.raises(ConfigError, match="control"):
        validate_offline({"recording": {"dir": "/x\x00y"}})
    with pytest.raises(ConfigError):
        validate_offline({"updates": {"public_key_file": 5}})
    cfg = validate_offline({"mqtt": {"tls_ca": "/etc/ssl/ca.pem"}, "updates": {"public_key_file": "/k.pub"}})
    assert cfg.mqtt.tls_ca  # neutralised, still set


def test_deeply_nested_config_is_refused_not_a_crash(console):
    r, _ = push(console, "[" * 60_000 + "]" * 60_000)
    assert r.status_code == 400 and "nested too deeply" in r.text


def test_sign_cli_does_not_open_paths_in_the_config(files, tmp_path, capsys):
    """``bedtime-fleet sign`` checks a config as the box would, without opening what it names."""
    import json

    from appliance.fleet import cli

    target = str(files / "secret.txt")
    cfg = tmp_path / "ward3.json"
    cfg.write_text(json.dumps({"updates": {"public_key_file": target}, "mqtt": {"tls_ca": target}}))
    _opened.clear()
    _recording.set()
    try:
        rc = cli.main(["sign", str(cfg), "--version", "c1", "--key", str(files / "real.key"), "--box", "ward3-07"])
    finally:
        _recording.clear()
    assert target not in _opened
    assert rc == 0 and (tmp_path / "ward3.json.sig.json").exists(), capsys.readouterr().err
