"""The model loader refuses a model whose bytes are not the ones its card promises."""
import json

import pytest

from appliance.tflite import ModelIntegrityError, TFLiteModel, file_sha256, load_model_card


def test_hash_mismatch_refused_before_loading(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"not really a model")
    (tmp_path / "model_card.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(ModelIntegrityError, match="does not match"):
        TFLiteModel(model)


def test_explicit_hash_wins_over_card(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"abc")
    (tmp_path / "model_card.json").write_text(json.dumps({"sha256": file_sha256(model)}))
    with pytest.raises(ModelIntegrityError):
        TFLiteModel(model, expected_sha256="f" * 64)


def test_missing_model_and_bad_card(tmp_path):
    with pytest.raises(FileNotFoundError):
        TFLiteModel(tmp_path / "absent.tflite")
    card = tmp_path / "card.json"
    card.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model_card(card)


def test_file_sha256_matches_hashlib(tmp_path):
    import hashlib

    p = tmp_path / "x"
    p.write_bytes(b"bedtime" * 10000)
    assert file_sha256(p) == hashlib.sha256(b"bedtime" * 10000).hexdigest()
