"""The loop classifier runtime (appliance/loop_model.py) with the committed int8 model; no TensorFlow."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from appliance.epoch import ArousalFeatures, Epoch, SignalQuality
from appliance.protocol.stages import Stage
from appliance.loop_model import (DEFAULT_MODEL_PATH, N_FEATURES, WINDOW_EPOCHS, LoopDetector, epoch_features,
                                  padded_window)
from appliance.tflite import ModelIntegrityError, file_sha256, load_model_card
from models.loops.simulate import DEFAULT_NOISE

CARD = DEFAULT_MODEL_PATH.with_name("model_card.json")


@pytest.fixture(scope="module")
def detector():
    return LoopDetector()


def clean_epoch(i: int, stage: int, *, conf: float = 0.9, ok: bool = True) -> Epoch:
    p = np.full(5, (1 - conf) / 4)
    p[stage] = conf
    q = SignalQuality() if ok else SignalQuality(ok=False, flags=frozenset({"lead_off"}))
    # Noise-free arousal markers: the simulator's per-stage means (what the model was trained around).
    a = ArousalFeatures(**{k: v[stage] for k, v in DEFAULT_NOISE.arousal_mean.items()})
    return Epoch(index=i, start_sample=i * 7500, end_time_s=(i + 1) * 30.0, quality=q, arousal=a, stage_probs=p)


def feed(det: LoopDetector, stages) -> np.ndarray:
    det.reset()
    return np.array([det.update(clean_epoch(i, s)) for i, s in enumerate(stages)])


R, W, N1, N2 = int(Stage.REM), int(Stage.W), int(Stage.N1), int(Stage.N2)


def test_model_file_matches_its_card_and_goals():
    card = load_model_card(CARD)
    assert card["sha256"] == file_sha256(DEFAULT_MODEL_PATH)
    assert DEFAULT_MODEL_PATH.stat().st_size < 50_000
    assert card["input"]["shape"] == [1, WINDOW_EPOCHS, N_FEATURES]
    assert any("nightmare" in c.lower() for c in card["caveats"])


def test_tampered_model_is_refused(tmp_path):
    bad = tmp_path / "loop.tflite"
    shutil.copy(DEFAULT_MODEL_PATH, bad)
    shutil.copy(CARD, tmp_path / "model_card.json")
    data = bytearray(bad.read_bytes())
    data[-10] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError):
        LoopDetector(bad)


def test_features_and_padding():
    f = epoch_features(clean_epoch(0, R))
    assert f.shape == (N_FEATURES,) and f.dtype == np.float32 and f[4] == pytest.approx(0.9) and f[9] == 1.0
    unknown = epoch_features(Epoch(index=0, start_sample=0, end_time_s=30.0))
    assert unknown[9] == 0.0 and np.allclose(unknown[:5], 0.2)
    w = padded_window(np.ones((3, N_FEATURES)))
    assert w.shape == (WINDOW_EPOCHS, N_FEATURES) and np.all(w[-3:] == 1) and np.allclose(w[0, :5], 0.2)


def test_update_is_a_probability_and_reset_makes_it_repeatable(detector):
    stages = [N2] * 30 + [R] * 20 + [W] * 2 + [R] * 20
    a, b = feed(detector, stages), feed(detector, stages)
    assert np.all((a >= 0) & (a <= 1)) and np.array_equal(a, b)


def test_update_equals_model_on_the_last_window(detector):
    stages = ([N2] * 20 + [R] * 10 + [W] * 3) * 4
    detector.reset()
    feats = []
    for i, s in enumerate(stages):
        e = clean_epoch(i, s)
        feats.append(epoch_features(e))
        p = detector.update(e)
    assert p == pytest.approx(detector.predict_window(np.stack(feats)[-WINDOW_EPOCHS:]))


def test_loop_pattern_scores_high_and_calm_sleep_low(detector):
    # Two REM -> W -> REM returns 12 epochs apart: the definition says a loop from the second return on.
    loop = [N2] * 60 + [R] * 10 + [W] * 2 + [R] * 10 + [W, N1] + [R] * 15
    calm = [N2] * 60 + [R] * 39
    p_loop, p_calm = feed(detector, loop), feed(detector, calm)
    second_return = 60 + 10 + 2 + 10 + 2
    assert p_loop[second_return + 3:].max() >= 0.5
    assert p_loop[:60].max() < 0.5
    assert p_calm.max() < 0.5


def test_missing_epochs_are_filled_as_unknown(detector, caplog):
    detector.reset()
    detector.update(clean_epoch(0, R))
    p = detector.update(clean_epoch(5, R))
    assert 0.0 <= p <= 1.0 and "missing" in caplog.text
    assert len(detector._history) == 6


@pytest.mark.slow
def test_training_pipeline_smoke(tmp_path, shared):
    """Train on the real hypnograms for one epoch (no cross-validation, simulated inputs only) and load the
    export with the box's runtime. Needs the ``train`` extra (TensorFlow), so CI skips it."""
    pytest.importorskip("tensorflow")
    from models.loops import train

    assert train.main(["--folds", "0", "--no-chain", "--copies", "1", "--epochs", "1", "--out", str(tmp_path)]) == 0
    model = tmp_path / "loop.tflite"
    card = load_model_card(tmp_path / "model_card.json")
    assert card["sha256"] == file_sha256(model)
    det = LoopDetector(model)
    p = [det.update(clean_epoch(i, Stage.N2)) for i in range(3)]
    assert all(0.0 <= v <= 1.0 for v in p)
