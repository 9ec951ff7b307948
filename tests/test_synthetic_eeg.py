"""The synthetic sleep-EEG generator: streaming == bulk, stage signatures, subjects, distressed arousals."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from appliance.dsp import arousal_features
from appliance.protocol.stages import Stage
from appliance.synthetic_eeg import SyntheticSleepEEG

FS = 250.0
W, N1, N2, N3, REM = (int(s) for s in (Stage.W, Stage.N1, Stage.N2, Stage.N3, Stage.REM))


def _rel_power(x: np.ndarray, lo: float, hi: float) -> float:
    f, p = signal.welch(x, fs=FS, nperseg=int(4 * FS), axis=-1)
    p = p.mean(axis=0) if p.ndim > 1 else p
    return float(p[(f >= lo) & (f < hi)].sum() / p[(f >= 0.5) & (f < 35)].sum())


@pytest.fixture(scope="module")
def blocks():
    """10 epochs of each stage, artefact-free, first channel; one array per stage (epochs, samples).

    The first and last epoch of each block may carry part of the neighbouring stage (transition
    epochs), so only the 8 inner ones are returned.
    """
    hyp = np.repeat([W, N1, N2, N3, REM], 10)
    gen = SyntheticSleepEEG(hyp, seed=11, artefacts=False, distressed_arousals=False, n_channels=1)
    x = gen.render_epochs()[:, :, 0]
    inner = np.ones(len(hyp), dtype=bool)
    inner[::10] = inner[9::10] = False
    return {s: x[(hyp == s) & inner] for s in (W, N1, N2, N3, REM)}, gen


def test_streaming_read_equals_bulk_render_and_pads_with_zeros_at_the_end():
    hyp = np.array([W, N1, N2, N3, REM, W])
    gen = SyntheticSleepEEG(hyp, seed=3)
    bulk = gen.render_epochs(channels=None).reshape(-1, 8)
    parts, rng = [], np.random.default_rng(0)
    while gen.remaining:
        parts.append(gen.read(int(rng.integers(1, 4000))))
    streamed = np.concatenate(parts)
    assert streamed.dtype == np.float64 and streamed.shape[1] == 8
    np.testing.assert_array_equal(streamed[:gen.n_samples], bulk)
    assert gen.n_samples == 6 * 30 * 250
    assert not np.any(streamed[gen.n_samples:])  # the last read ran past the end: zeros
    assert gen.exhausted and gen.remaining == 0
    assert not np.any(gen.read(100))
    gen.rewind()
    np.testing.assert_array_equal(gen.read(500), bulk[:500])


def test_same_seed_same_signal_other_seed_other_subject():
    hyp = np.array([N2, N2])
    a = SyntheticSleepEEG(hyp, seed=1).read(1000)
    b = SyntheticSleepEEG(hyp, seed=1).read(1000)
    c = SyntheticSleepEEG(hyp, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c.read(1000))
    assert SyntheticSleepEEG(hyp, seed=1).traits != c.traits


def test_wake_has_alpha_at_the_subjects_peak(blocks):
    by_stage, gen = blocks
    assert _rel_power(by_stage[W], 8, 12) > 2 * _rel_power(by_stage[N2], 8, 12)
    f, p = signal.welch(by_stage[W], fs=FS, nperseg=int(8 * FS))
    band = (f >= 7) & (f <= 13)
    assert abs(f[band][np.argmax(p.mean(0)[band])] - gen.traits.alpha_hz) < 0.6


def test_n1_has_theta_n2_spindles_n3_big_delta_rem_low_amplitude(blocks):
    by_stage, _ = blocks
    assert _rel_power(by_stage[N1], 4, 8) > 2 * _rel_power(by_stage[W], 4, 8)
    assert _rel_power(by_stage[N2], 11, 16) > 3 * _rel_power(by_stage[REM], 11, 16)
    # AASM slow waves: 0.5-2 Hz, > 75 uV peak to peak, in N3.
    sos = signal.butter(4, [0.5, 2.0], btype="bandpass", fs=FS, output="sos")
    delta = signal.sosfiltfilt(sos, by_stage[N3], axis=1)
    assert np.median(np.ptp(delta, axis=1)) > 75.0
    rms = {s: float(np.sqrt(np.mean(x**2))) for s, x in by_stage.items()}
    assert rms[REM] < rms[N2] < rms[N3]


def test_k_complexes_are_big_transients_in_n2(blocks):
    by_stage, _ = blocks
    sos = signal.butter(2, [0.5, 4.0], btype="bandpass", fs=FS, output="sos")
    n2 = signal.sosfiltfilt(sos, by_stage[N2], axis=1)
    rem = signal.sosfiltfilt(sos, by_stage[REM], axis=1)
    assert np.max(np.abs(n2)) > 2 * np.max(np.abs(rem))


def test_wake_after_rem_carries_distressed_arousal_markers():
    hyp = np.array([N2, REM, REM, W, W, N2, N2, N2, N2, W])
    gen = SyntheticSleepEEG(hyp, seed=5, n_channels=1)
    assert gen.distressed.tolist() == [False, False, False, True, True, False, False, False, False, False]
    x = gen.render_epochs()[:, :, 0]
    distressed = [arousal_features(x[i], fs_hz=FS) for i in (3, 4)]
    calm = arousal_features(x[9], fs_hz=FS)
    for d in distressed:
        assert d.high_freq_rel > 2 * calm.high_freq_rel
        assert d.beta_rel > calm.beta_rel
        assert d.movement_fraction > 0.5 > calm.movement_fraction
    none = SyntheticSleepEEG(hyp, seed=5, distressed_arousals=False)
    assert not none.distressed.any()
    chosen = SyntheticSleepEEG(hyp, seed=5, distressed_arousals=np.arange(10) == 9)
    assert chosen.distressed.tolist() == [False] * 9 + [True]


def test_channels_share_the_source_and_frontal_ones_see_the_eyes():
    gen = SyntheticSleepEEG(np.array([REM] * 4), seed=2)
    x = gen.read(gen.n_samples)
    c = np.corrcoef(x.T)
    assert np.all(c[0, 3:] > 0.3)
    lp = signal.butter(2, 1.0, fs=FS, output="sos")
    slow = signal.sosfiltfilt(lp, x, axis=0)
    assert slow[:, 1].std() > 2 * slow[:, 0].std()  # channel 1 plays a frontal lead: eye movements


def test_bad_hypnograms_are_refused_clearly():
    with pytest.raises(ValueError, match="unknown stage"):
        SyntheticSleepEEG(np.array([0, 7]))
    with pytest.raises(ValueError, match="empty"):
        SyntheticSleepEEG(np.array([], dtype=int))
    with pytest.raises(ValueError, match="one value per epoch"):
        SyntheticSleepEEG(np.array([0, 0]), distressed_arousals=np.array([True]))
    # Unscored epochs are drawn (as wake) rather than refused: real hypnograms have them.
    assert SyntheticSleepEEG(np.array([-1, 2]), n_channels=1).render_epochs().shape == (2, 7500, 1)


def test_staging_channel_does_not_depend_on_how_many_channels_are_drawn():
    """Channel 0 is what the models were trained and evaluated on; the other channels' cheaper own
    backgrounds (windows of a per-subject 1/f table) must leave it untouched."""
    hyp = np.array([W, N2, N3, REM, W])
    one = SyntheticSleepEEG(hyp, seed=4, n_channels=1).render_channel(0)
    eight = SyntheticSleepEEG(hyp, seed=4, n_channels=8)
    np.testing.assert_array_equal(eight.render_channel(0), one)
    np.testing.assert_array_equal(eight.read(eight.n_samples)[:, 0], one)


def test_other_channels_own_backgrounds_are_independent_unit_rms_pink_noise():
    gen = SyntheticSleepEEG(np.array([N2] * 6), seed=9)
    gain = 4.0 * gen.traits.amplitude_scale
    for e in range(6):
        own = gen._own_background(e, np.arange(8)) / gain
        assert not own[:, 0].any()
        assert np.allclose(own[:, 1:].std(axis=0), 1.0, atol=0.35)
        c = np.corrcoef(own[:, 1:].T)
        assert np.all(np.abs(c[np.triu_indices(7, 1)]) < 0.5)  # no two channels share samples
    f, p = signal.welch(gen._own_table, fs=FS, nperseg=1024)
    assert p[(f > 1) & (f < 2)].mean() > 10 * p[(f > 10) & (f < 20)].mean()  # 1/f^b, b ~ 2


# ---- the wide population: the real world's spread, each knob over its published range (issue 13) --------------
def test_typical_population_is_the_default_and_unchanged():
    from appliance.synthetic_eeg import SubjectTraits

    hyp = np.array([W, N2, N3])
    gen = SyntheticSleepEEG(hyp, seed=5, n_channels=1)
    assert gen.population == "typical"
    assert gen.traits == SubjectTraits.draw(np.random.default_rng([5, 0x5EED]))
    assert (gen.traits.montage, gen.traits.spindles_per_epoch, gen.traits.mains_uv) == ("C3-A2", 2.2, 2.0)
    with pytest.raises(ValueError, match="population"):
        SyntheticSleepEEG(hyp, population="martian")


def test_wide_population_spans_the_cited_ranges():
    from appliance.synthetic_eeg import MONTAGES, SubjectTraits

    traits = [SubjectTraits.draw_wide(np.random.default_rng([s, 0x5EED])) for s in range(400)]

    def span(name):
        v = np.array([getattr(t, name) for t in traits])
        return v.min(), v.max()

    assert {t.montage for t in traits} == set(MONTAGES)
    assert {t.mains_hz for t in traits} == {50.0, 60.0}
    lo, hi = span("age_years")
    assert lo < 25 and hi > 75 and 18 <= lo and hi <= 85
    lo, hi = span("background_exponent")
    assert 1.0 <= lo < 1.2 and 2.0 < hi <= 2.2
    lo, hi = span("alpha_hz")
    assert 7.0 < lo < 8.5 and 11.5 < hi <= 12.0
    lo, hi = span("spindles_per_epoch")  # 1-8 per minute of N2
    assert 0.5 <= lo < 0.7 and 3.7 < hi <= 4.0
    lo, hi = span("spindle_hz")
    assert 11.0 <= lo and hi <= 15.0
    lo, hi = span("mains_uv")
    assert 0.0 <= lo < 1.0 and 19.0 < hi <= 20.0
    # slow waves shrink with age (Carrier 2011): the oldest third has smaller delta_scale than the youngest
    ages = np.array([t.age_years for t in traits])
    delta = np.array([t.delta_scale for t in traits])
    assert delta[ages > 62].mean() < 0.75 * delta[ages < 40].mean()
    # a forehead band carries less cortex and more eye/muscle than a central lead
    fh = [t for t in traits if t.montage == "forehead"]
    c3 = [t for t in traits if t.montage == "C3-A2"]
    assert np.median([t.amplitude_scale for t in fh]) < 0.6 * np.median([t.amplitude_scale for t in c3])
    assert min(t.eye_scale for t in fh) > max(t.eye_scale for t in c3)


@pytest.mark.parametrize("fs", [100.0, 128.0, 200.0, 256.0, 512.0])
def test_wide_population_renders_at_any_rate_with_its_traits(fs):
    hyp = np.array([W, W, N2, N2, N3, N3, REM])
    gen = SyntheticSleepEEG(hyp, seed=17, n_channels=1, fs_hz=fs, population="wide")
    x = gen.render_channel(0)
    assert x.shape == (len(hyp) * int(30 * fs),) and np.isfinite(x).all()
    assert 2.0 < x.std() < 400.0
    assert gen.mains_hz == gen.traits.mains_hz
    # streaming equals bulk in the wide population too
    streamed = SyntheticSleepEEG(hyp, seed=17, n_channels=1, fs_hz=fs, population="wide").read(len(x))[:, 0]
    np.testing.assert_array_equal(streamed, x)


def test_spindle_density_knob_changes_the_n2_sigma_power():
    from dataclasses import replace

    hyp = np.full(20, N2)
    gens = []
    for density in (0.5, 4.0):
        g = SyntheticSleepEEG(hyp, seed=3, n_channels=1, artefacts=False, population="wide")
        g.traits = replace(g.traits, spindles_per_epoch=density, spindle_uv=(20.0, 30.0))
        gens.append(g.render_channel(0))
    low, high = (_rel_power(x.reshape(20, -1), 11.0, 16.0) for x in gens)
    assert high > 1.5 * low
