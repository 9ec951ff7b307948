"""The protocol layer: one box-id rule that the box's configuration, the MQTT schema, signed manifests and the
console all apply, so an id one side accepts is never refused by another."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.protocol import schema
from appliance.protocol import signing
from appliance.protocol.boxconfig import ConfigError, validate_config
from appliance.protocol.ids import BOX_ID_RE, is_box_id

# ids near the rule's edges, plus anything hypothesis finds
EDGES = ["box-1", "a", "A.b_c-d", "-box", "_box", ".box", "box/1", "box+1", "box 1", "bóx", "box\n", "b" * 64,
         "b" * 65, "", "１２", "box#", "box.", "ß"]
IDS = st.one_of(st.sampled_from(EDGES), st.text(max_size=70),
                st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,70}", fullmatch=True))


def _config_accepts(box_id: str) -> bool:
    try:
        validate_config({"box": {"id": box_id}})
    except ConfigError as e:
        assert e.key == "box.id"
        return False
    return True


def _schema_accepts(box_id: str) -> bool:
    try:
        schema.check_box_id(box_id)
    except schema.SchemaError:
        return False
    return True


_KEY = Ed25519PrivateKey.generate()


def _signer_accepts(box_id: str) -> bool:
    try:
        signing.sign_bytes(b"{}", _KEY, boxes=[box_id], kind="config", name="c.json", version="v1")
    except ValueError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(box_id=IDS)
def test_config_schema_and_signer_agree_on_every_box_id(box_id: str) -> None:
    want = is_box_id(box_id)
    assert _config_accepts(box_id) == want
    assert _schema_accepts(box_id) == want
    assert _signer_accepts(box_id) == want


@pytest.mark.parametrize("box_id,ok", [("box-0007", True), ("ward.3", True), ("-box", False), ("bóx", False),
                                       ("box\n", False), ("b" * 64, True), ("b" * 65, False)])
def test_the_rule(box_id: str, ok: bool) -> None:
    assert is_box_id(box_id) is ok


def test_one_definition() -> None:
    # the schema and the console use the protocol's compiled rule itself, not a copy
    from appliance.fleet.web import app

    assert schema.BOX_ID_RE is BOX_ID_RE and app.BOX_ID_RE is BOX_ID_RE and signing.AUDIENCE_RE is BOX_ID_RE
