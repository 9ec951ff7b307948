"""The pieces the daemon was split into (issue 14): the epoch assembler, the breather's emitted state changes and
how the night pipeline reports them. A whole night through all of them is tests/test_daemon_*.py and
``bench/compare_night_outputs.py`` (byte-identical outputs to the daemon before the split)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from appliance.breather import BreatherChange, BreatherState
from appliance.epoch_assembler import MAX_GAP_FILL_FRAMES, EpochAssembler
from appliance.night_pipeline import BreatherEvents
from appliance.protocol.safety import BreatherConfig
from appliance.ring import Frames
from tests.test_breather import R, Rig, ep

FS, N_CH, EPOCH = 250, 2, 250 * 30


def _frames(index: np.ndarray, rng: np.random.Generator) -> Frames:
    n = len(index)
    return Frames(index=index.astype(np.int64), timestamp_ns=np.zeros(n, np.int64),
                  status=(0xC00000 | rng.integers(0, 2, n) << 12).astype(np.uint32),
                  counts=rng.integers(-50_000, 50_000, (n, N_CH)).astype(np.int32))


def _assemble(chunks: list[Frames], missed=lambda: 0) -> tuple[list, list]:
    asm = EpochAssembler(fs_hz=FS, n_channels=N_CH, gain=24, staging_channel=0, missed_frames=missed)
    epochs, slices = [], []
    for f in chunks:
        chunk = asm.convert(f)
        for n, e in asm.slices(chunk):
            slices.append(n)
            if e is not None:  # the raw buffer is reused: copy it, as the pipeline reads it before the next slice
                epochs.append((e.staging_uv.copy(), e.model_uv.copy(), e.frames_lost, e.lead_off_bits))
    return epochs, slices


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(1, 3 * EPOCH - 1), max_size=8, unique=True))
def test_epochs_do_not_depend_on_how_the_ring_was_popped(cuts):
    """However the frames came off the ring, the same epochs come out (raw, model-rate, lost, lead-off), and the
    slices end exactly at the epoch boundaries."""
    rng = np.random.default_rng(1)
    whole = _frames(np.arange(3 * EPOCH), rng)
    bounds = [0, *sorted(cuts), 3 * EPOCH]
    parts = [Frames(*(getattr(whole, k)[a:b] for k in ("index", "timestamp_ns", "status", "counts")))
             for a, b in zip(bounds, bounds[1:])]
    ref, _ = _assemble([whole])
    got, slices = _assemble(parts)
    assert len(ref) == len(got) == 3 and sum(slices) == 3 * EPOCH
    assert np.cumsum(slices).tolist()[-1] == 3 * EPOCH and EPOCH in np.cumsum(slices).tolist()
    for (r_raw, r_model, r_lost, r_loff), (g_raw, g_model, g_lost, g_loff) in zip(ref, got):
        assert np.array_equal(r_raw, g_raw) and r_lost == g_lost == 0 and r_loff == g_loff
        np.testing.assert_allclose(g_model, r_model, rtol=0, atol=1e-9)
        assert r_model.shape == (3000,)


def test_a_gap_is_counted_filled_flat_and_flags_its_epoch():
    """Frames the ring dropped took an index: the gap is counted into the epoch it falls in and filled with zeros,
    so the next epoch starts on the night's timeline; DRDY edges the driver missed count into the epoch too."""
    rng = np.random.default_rng(2)
    gap = 500
    before = _frames(np.arange(0, 1000), rng)
    after = _frames(np.arange(1000 + gap, 2 * EPOCH + gap), rng)
    missed = iter([3, 3])
    asm = EpochAssembler(fs_hz=FS, n_channels=N_CH, gain=24, staging_channel=0, missed_frames=lambda: next(missed))
    list(asm.slices(asm.convert(before)))
    chunk = asm.convert(after)
    assert chunk.lost == gap and chunk.filled and len(chunk.uv) == len(after) + gap
    assert not chunk.uv[:gap].any() and chunk.uv[gap:].any()
    done = [(n, e.frames_lost) for n, e in asm.slices(chunk) if e is not None]
    assert done == [(EPOCH - 1000, gap + 3), (EPOCH, 0)]
    assert MAX_GAP_FILL_FRAMES == 250 * 600


@pytest.fixture
def rig():
    r = Rig(BreatherConfig(cue_s=30.0, light_s=60.0))
    yield r
    r.close()


def test_the_breather_emits_each_change_of_state_with_the_ended_sessions_report(rig):
    seen: list[BreatherChange] = []
    rig.b.on_change = seen.append
    rig.b.on_epoch(ep(0, R, p_loop=0.9), now_s=0.0)
    for t in np.arange(0.5, 91.0, 0.5):
        rig.b.tick(t)
    rig.b.on_epoch(ep(3, R, p_loop=0.9), now_s=91.0)
    S = BreatherState
    assert [(c.before, c.after) for c in seen] == [(S.IDLE, S.CUE), (S.CUE, S.LIGHT), (S.LIGHT, S.ESCALATE),
                                                   (S.ESCALATE, S.REFRACTORY)]
    assert [c.session for c in seen] == [1, 1, 1, 1]
    assert [c.session_report is not None for c in seen] == [False, False, True, False]
    assert seen[2].session_report == rig.b.session_reports[-1] and seen[2].session_report["outcome"] == "escalated"


def test_a_failing_listener_never_stops_the_policy_nor_the_alert(rig):
    def broken(change):
        raise RuntimeError("listener broke")

    rig.b.on_change = broken
    rig.b.on_epoch(ep(0, R, p_loop=0.9), now_s=0.0)
    for t in np.arange(0.5, 91.0, 0.5):
        rig.b.tick(t)
    assert rig.b.state == BreatherState.ESCALATE and len(rig.escalations) == 1
    assert rig.light_pin == 0 and rig.speaker_pin == 0


def test_breather_events_reports_the_net_change_at_each_step():
    recorded, statuses = [], []
    ev = BreatherEvents(record_event=lambda kind, t, **f: recorded.append((kind, t, f)),
                        publish_status=lambda: statuses.append(1), state="idle")
    S = BreatherState
    ev.report(10.0)
    assert recorded == [] and statuses == []  # nothing changed: nothing said
    ev.on_change(BreatherChange(before=S.IDLE, after=S.CUE, session=1))
    assert ev.in_session and recorded == []  # noted only; reported at the pipeline's step
    ev.report(30.0, 0)
    assert recorded == [("breather_started", 30.0, {"session": 1, "epoch_index": 0})] and len(statuses) == 1
    report = {"session": 1, "outcome": "completed", "reason": "session_time_up", "duration_s": 90.0,
              "max_light": 0.2, "max_volume": 0.1}
    ev.on_change(BreatherChange(before=S.CUE, after=S.LIGHT, session=1))
    ev.on_change(BreatherChange(before=S.LIGHT, after=S.REFRACTORY, session=1, session_report=report))
    ev.report(120.0)  # cue -> light -> refractory within one run of ticks: one net change
    assert recorded[1:] == [("breather_ended", 120.0, {"outcome": "completed", "reason": "session_time_up",
                                                       "duration_s": 90.0, "max_light": 0.2, "max_volume": 0.1})]
    assert ev.session_reports == [report] and not ev.in_session and len(statuses) == 2


class _Outputs:
    """The pipeline's view of a rig's light and speaker (levels, and a mirror that is not there)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    def levels(self) -> tuple[float, float]:
        return self.rig.light.level, self.rig.speaker.level

    def sync_mirror(self) -> None:
        pass

    def all_off(self) -> None:
        self.rig.light.off()
        self.rig.speaker.off()


def _reference_tick(self, *, up_to_now: bool = True) -> None:
    """NightPipeline.tick the straightforward way: every point of the grid ticked, whatever the breather's state."""
    from appliance.night_pipeline import TICKS_PER_S

    now = self.signal_s()
    k = self._tick_index + 1
    while k / TICKS_PER_S < now or (up_to_now and k / TICKS_PER_S == now):
        self.breather.tick(k / TICKS_PER_S)
        self._trace_outputs(k / TICKS_PER_S)
        self._tick_index, self._last_tick_s = k, k / TICKS_PER_S
        k += 1
    self.breather_events.report(self._last_tick_s)


@settings(max_examples=20, deadline=None)
@given(pops=st.lists(st.integers(1, 120 * FS), min_size=1, max_size=60),
       loops=st.lists(st.booleans(), min_size=40, max_size=40), stray=st.integers(0, 59))
def test_idle_ticks_leave_the_same_night_as_ticking_every_second(tmp_path_factory, pops, loops, stray):
    """The pipeline ticks an idle breather once per run of ticks: breather clock, state, outputs, their trace and
    the events are those of ticking it at every second, whatever the pops and the sessions (and an output left
    on outside a session is still forced off)."""
    import types

    from appliance.night_journal import NightJournal
    from appliance.night_pipeline import NightPipeline
    from tests.daemon_helpers import box_config

    tmp = tmp_path_factory.mktemp("night")
    cfg = box_config(tmp, port=None)
    runs = []
    for reference in (False, True):
        rig = Rig(BreatherConfig(cue_s=30.0, light_s=60.0, confirm_epochs=1, min_gap_s=1800.0))
        try:
            night = NightPipeline(cfg, fs_hz=FS, n_channels=N_CH, journal=NightJournal(), notify=lambda _m: None)
            night.equip(stager=None, loop_detector=None, breather=rig.b, link=None)
            night.outputs = _Outputs(rig)
            if reference:
                night.tick = types.MethodType(_reference_tick, night)
            seen = []
            for k, n in enumerate(pops):
                if k == stray:
                    rig.light.value = 0.5  # something left the light on outside the breather
                fill = night.counters["frames"] % EPOCH
                while n:
                    take = min(n, EPOCH - fill)
                    night.counters["frames"] += take
                    n -= take
                    fill = (fill + take) % EPOCH
                    if fill:
                        night.tick()
                        continue
                    night.tick(up_to_now=False)
                    i = night.counters["frames"] // EPOCH - 1
                    rig.b.on_epoch(ep(i, R, p_loop=0.95 if loops[i % len(loops)] else 0.0))
                    night.breather_events.report(night.signal_s(), i)
                    night.tick()
                    seen.append((rig.b.state, rig.b._sim_now, rig.light.level, rig.speaker.level))
            runs.append((seen, list(night.output_trace), list(night.journal.events), night._last_tick_s,
                         rig.b._sim_now, rig.light.level, rig.speaker.level, rig.b.sessions))
        finally:
            rig.close()
    assert runs[0] == runs[1]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3000), gain=st.sampled_from([1, 2, 4, 6, 8, 12, 24]),
       gap=st.integers(0, 400))
def test_converted_chunks_are_the_straightforward_formulas(seed, n, gain, gap):
    """A chunk's microvolts, lead-off bits and staging channel are exactly counts.astype(float32) * float32(uV
    per count), LOFF_STATP | LOFF_STATN and the staging column in float64, gap filled with zeros."""
    from appliance.ads1299_frame import uv_per_count

    rng = np.random.default_rng(seed)
    asm = EpochAssembler(fs_hz=FS, n_channels=N_CH, gain=gain, staging_channel=1, missed_frames=lambda: 0)
    first = _frames(np.arange(5), rng)
    first.counts[:] = rng.integers(-(2**23), 2**23, first.counts.shape)
    asm.convert(first)
    f = _frames(np.arange(5 + gap, 5 + gap + n), rng)
    f.counts[:] = rng.integers(-(2**23), 2**23, f.counts.shape)
    f.status[:] = rng.integers(0, 2**24, n).astype(np.uint32)
    chunk = asm.convert(f)
    want_uv = f.counts.astype(np.float32) * np.float32(uv_per_count(gain))
    want_loff = f.loff_statp | f.loff_statn
    if gap:
        want_uv = np.concatenate([np.zeros((gap, N_CH), np.float32), want_uv])
        want_loff = np.concatenate([np.zeros(gap, want_loff.dtype), want_loff])
    assert chunk.uv.dtype == np.float32 and np.array_equal(chunk.uv, want_uv)
    assert chunk.lead_off.dtype == want_loff.dtype and np.array_equal(chunk.lead_off, want_loff)
    assert chunk.staging.dtype == np.float64 and np.array_equal(chunk.staging, want_uv[:, 1].astype(np.float64))


def _night_popped(tmp, pops: list[int], loops: list[bool]) -> tuple[list, list]:
    """The breather's events and output trace of one night whose frames arrive in pops of the given sizes."""
    from appliance.night_journal import NightJournal
    from appliance.night_pipeline import NightPipeline
    from tests.daemon_helpers import box_config

    rig = Rig(BreatherConfig(cue_s=60.0, light_s=120.0, confirm_epochs=1, min_gap_s=1800.0))
    try:
        night = NightPipeline(box_config(tmp, port=None), fs_hz=FS, n_channels=N_CH, journal=NightJournal(),
                              notify=lambda _m: None)
        night.equip(stager=None, loop_detector=None, breather=rig.b, link=None)
        night.outputs = _Outputs(rig)
        for n in pops:  # the pipeline's own steps for one pop (NightPipeline.take), without the signal
            while n:
                fill = night.counters["frames"] % EPOCH
                take = min(n, EPOCH - fill)
                night.counters["frames"] += take
                n -= take
                if (fill + take) % EPOCH:
                    night.tick()
                    continue
                night.tick(up_to_now=False)
                i = night.counters["frames"] // EPOCH - 1
                rig.b.on_epoch(ep(i, R, p_loop=0.95 if loops[i] else 0.0))
                night.breather_events.report(night.signal_s(), i)
                night.tick()
        return list(night.journal.events), list(night.output_trace)
    finally:
        rig.close()


@settings(max_examples=15, deadline=None)
@example(first=FS // 2 + 7, size=FS)  # every pop ending 0.528 s into a second: failed before the grid
@given(first=st.integers(1, 3 * FS), size=st.integers(1, 3 * FS))
def test_a_night_is_the_same_however_its_frames_arrive(tmp_path_factory, first: int, size: int) -> None:
    # Before 2026-12-03 a pop that ended mid-second moved the breather's whole-second ticks off the signal's
    # seconds: the same night stamped breather_light at 179.0 or 180.0 s and breather_ended at 299.0 or 299.528 s
    # depending on how its frames arrived (bench/compare_night_outputs.py said DIFFER once in ~50 runs).
    loops = [False] * 3 + [True] * 12 + [False] * 25
    total = len(loops) * EPOCH
    whole_seconds = _night_popped(tmp_path_factory.mktemp("a"), [FS] * (total // FS), loops)
    pops = [first] + [size] * ((total - first) // size)
    pops.append(total - sum(pops))
    other = _night_popped(tmp_path_factory.mktemp("b"), [p for p in pops if p], loops)
    assert whole_seconds[0] and other == whole_seconds
