"""Ed25519 signing of models and configs: what verifies, and every way a forgery is refused."""
from __future__ import annotations

import argparse
import json
import stat

import pytest

from appliance.protocol import signing
from appliance.protocol.signing import SignatureError


@pytest.fixture
def keys(tmp_path):
    priv, pub = tmp_path / "k.key", tmp_path / "k.pub"
    kid = signing.generate_keypair(priv, pub)
    return signing.load_private_key(priv), pub.read_bytes(), kid


def test_keypair_files_and_key_id(tmp_path, keys):
    key, pub, kid = keys
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    assert signing.key_id(pub) == kid and len(kid) == 16
    with pytest.raises(FileExistsError):  # never overwrite a signing key
        signing.generate_keypair(tmp_path / "k.key", tmp_path / "other.pub")


def test_encrypted_private_key_needs_passphrase(tmp_path):
    signing.generate_keypair(tmp_path / "e.key", tmp_path / "e.pub", passphrase=b"open sesame")
    assert b"ENCRYPTED" in (tmp_path / "e.key").read_bytes()
    with pytest.raises(SignatureError, match=r"encrypted: set \$BEDTIME_SIGNING_PASSPHRASE"):  # was a bare TypeError:
        signing.load_private_key(tmp_path / "e.key")  # a traceback out of `bedtime-fleet sign`
    assert signing.load_private_key(tmp_path / "e.key", passphrase=b"open sesame")


def test_sign_and_verify_roundtrip(keys):
    key, pub, kid = keys
    payload = b"\x00model bytes\xff" * 100
    m = signing.sign_bytes(payload, key, boxes=["box-a"], kind="model", name="stager.tflite", version="2026.11.2")
    assert m["sha256"] and m["key_id"] == kid and m["size_bytes"] == len(payload)
    assert signing.verify_manifest(payload, json.dumps(m), pub, kind="model")["version"] == "2026.11.2"


def test_sign_file_writes_detached_manifest(tmp_path, keys):
    key, pub, _ = keys
    f = tmp_path / "cfg.json"
    f.write_text('{"telemetry": {"interval_s": 30.0}}')
    out = signing.sign_file(f, key, boxes=["box-a"], kind="config", version="c1")
    assert out == tmp_path / "cfg.json.sig.json"
    signing.verify_manifest(f.read_bytes(), out.read_text(), pub, kind="config")


@pytest.mark.parametrize("attack", ["payload", "truncated", "version", "kind_field", "signature", "other_key",
                                    "wrong_kind", "garbage", "missing_field"])
def test_forgeries_refused(tmp_path, keys, attack):
    key, pub, _ = keys
    payload = b"the real model"
    m = signing.sign_bytes(payload, key, boxes=["box-a"], kind="model", name="m.tflite", version="1")
    kind = "model"
    if attack == "payload":
        payload = b"the evil model"
    elif attack == "truncated":
        payload = payload[:-1]
    elif attack == "version":
        m["version"] = "999"  # signed fields cannot be edited
    elif attack == "kind_field":
        m["kind"] = "config"
        kind = "config"
    elif attack == "signature":
        m["signature"] = m["signature"][:-4] + ("AAA=" if not m["signature"].endswith("AAA=") else "BBB=")
    elif attack == "other_key":
        other = signing.generate_keypair(tmp_path / "o.key", tmp_path / "o.pub")
        assert other
        m = signing.sign_bytes(payload, signing.load_private_key(tmp_path / "o.key"), boxes=["box-a"], kind="model", name="m", version="1")
    elif attack == "wrong_kind":
        kind = "config"  # a signed model offered as a config
    elif attack == "garbage":
        m = "{not json"
    elif attack == "missing_field":
        del m["sha256"]
    with pytest.raises(SignatureError):
        signing.verify_manifest(payload, m, pub, kind=kind)


def test_cli_keys_and_sign(tmp_path, capsys):
    from appliance.fleet import cli

    cli.build_parser()
    assert {"keys", "sign", "serve", "user", "rollout"} <= set(cli.SUBCOMMANDS)
    assert cli.main(["keys", "--dir", str(tmp_path)]) == 0
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"telemetry": {"interval_s": 30.0}}))
    assert cli.main(["sign", str(cfg), "--version", "c7", "--key", str(tmp_path / "fleet-signing.key"),
                     "--box", "box-a"]) == 0
    man = json.loads((tmp_path / "c.json.sig.json").read_text())
    assert man["kind"] == "config" and man["version"] == "c7"
    signing.verify_manifest(cfg.read_bytes(), man, (tmp_path / "fleet-signing.pub").read_bytes(), kind="config")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"telemetry": {"interval_s": -5}}))  # the box would refuse it: so does sign
    assert cli.main(["sign", str(bad), "--version", "x", "--key", str(tmp_path / "fleet-signing.key"),
                     "--box", "box-a"]) == 2
    assert not (tmp_path / "bad.json.sig.json").exists()
    # a manifest is always bound: no box or group, a bad name, an endless life, a serial of 0 are one-line refusals
    capsys.readouterr()
    cfg2 = tmp_path / "c2.json"
    cfg2.write_text(json.dumps({"telemetry": {"interval_s": 30.0}}))
    for extra, why in (([], "name the boxes"), (["--box", "a/b"], "not a box id"),
                       (["--box", "b1", "--expires-in-days", "1000"], "at most 366 days"),
                       (["--box", "b1", "--serial", "0"], "serial")):
        assert cli.main(["sign", str(cfg2), "--version", "c8", "--key", str(tmp_path / "fleet-signing.key"),
                         *extra]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1, err
    assert not (tmp_path / "c2.json.sig.json").exists()


def test_model_card_signed_with_the_model(tmp_path, keys):
    """sign_file picks up model_card.json beside a model (or --card); the signature covers the card."""
    import hashlib

    key, pub, _ = keys
    model = tmp_path / "stager.tflite"
    model.write_bytes(b"TFL3 model bytes" * 10)
    with pytest.raises(FileNotFoundError, match="model card"):
        signing.sign_file(model, key, boxes=["box-a"], kind="model", version="s1")
    card = {"sha256": hashlib.sha256(model.read_bytes()).hexdigest(), "context_epochs": 5}
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    m = json.loads(signing.sign_file(model, key, boxes=["box-a"], kind="model", version="s1").read_text())
    assert m["model_card"] == card
    assert signing.verify_manifest(model.read_bytes(), m, pub, kind="model")["model_card"] == card
    m["model_card"]["context_epochs"] = 6  # changed after signing
    with pytest.raises(SignatureError, match="does not verify"):
        signing.verify_manifest(model.read_bytes(), m, pub, kind="model")
    other = tmp_path / "other_card.json"
    other.write_text(json.dumps(dict(card, sha256="0" * 64)))
    with pytest.raises(ValueError, match="wrong card"):
        signing.sign_file(model, key, boxes=["box-a"], kind="model", version="s1", card=other)


def test_cli_sign_picks_up_the_card(tmp_path, keys, capsys):
    import hashlib

    from appliance.fleet.web import cli

    key, pub, _ = keys
    model = tmp_path / "m.tflite"
    model.write_bytes(b"model")
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"sha256": hashlib.sha256(b"model").hexdigest()}))
    ns = argparse.Namespace(file=model, kind=None, version="s2", key=tmp_path / "k.key", out=None, card=None,
                            box=["box-a"], group=[], serial=None, expires_in_days=None)
    assert cli.cmd_sign(ns) == 2 and "model card" in capsys.readouterr().err  # none beside it, none given
    ns.card = card
    assert cli.cmd_sign(ns) == 0
    m = json.loads((tmp_path / "m.tflite.sig.json").read_text())
    assert m["model_card"]["sha256"] == hashlib.sha256(b"model").hexdigest()


def test_a_manifest_with_a_number_of_thousands_of_digits_is_a_signature_error():
    """Python refuses to read integers of more than 4300 digits with a ValueError that is no JSONDecodeError: it
    escaped parse_manifest (a 500 on the console's upload, a traceback from ``bedtime-fleet rollout``)."""
    with pytest.raises(signing.SignatureError, match="not valid JSON"):
        signing.parse_manifest('{"schema": ' + "9" * 5000 + "}")
