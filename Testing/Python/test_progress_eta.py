"""The progress ETA follows the recent step rate, not the mean over a slow warm-up (a fake clock, no timing)."""
from __future__ import annotations

import pytest

from ContrastiveSegLib.progress import StageProgress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _run(step_seconds, total: int):
    """Feed ``step_seconds[i]`` as the duration of step i + 1; return the events."""
    clock, events = FakeClock(), []
    reporter = StageProgress("finetune", total, events.append, clock=clock)
    for step, seconds in enumerate(step_seconds, start=1):
        clock.now += seconds
        reporter.update(step, loss=1.0)
    return events


def test_a_slow_first_step_does_not_inflate_the_eta():
    # The case: warm-up makes the first steps slow; the mean-so-far ETA said 4,205 s for a 1,006 s run.
    events = _run([30.0] + [1.0] * 19, total=100)
    by_step = {e["step"]: e["eta_s"] for e in events}
    assert by_step[1] == pytest.approx(30.0 * 99)  # nothing else to go by yet
    for step in (2, 5, 10, 20):
        assert by_step[step] == pytest.approx(100 - step)  # 1 s per step from here on
        # The mean since the start would have said this much more:
        assert (30 + step - 1) / step * (100 - step) > 1.4 * by_step[step]


def test_the_eta_follows_a_change_of_pace_within_the_window():
    events = _run([1.0] * 30 + [3.0] * (StageProgress.ETA_WINDOW + 5), total=200)
    last = events[-1]
    assert last["eta_s"] == pytest.approx(3.0 * (200 - last["step"]))


def test_the_eta_is_zero_at_the_end_and_never_negative():
    events = _run([0.5, 2.0, 0.1, 0.1, 0.3], total=5)
    assert all(e["eta_s"] >= 0 for e in events)
    assert events[-1]["eta_s"] == 0
    assert [e["step"] for e in events] == [1, 2, 3, 4, 5] and {e["of"] for e in events} == {5}


def test_uneven_step_increments_use_the_steps_covered():
    """Prediction reports every batch of slices: the rate is per slice, however many a report covers."""
    clock, events = FakeClock(), []
    reporter = StageProgress("predict", 64, events.append, clock=clock)
    for done in (16, 32, 48):
        clock.now += 4.0  # 16 slices in 4 s
        reporter.update(done)
    assert events[-1]["eta_s"] == pytest.approx(16 * 0.25)


def test_no_callback_means_no_clock_work_and_cancel_still_checked():
    import threading

    from ContrastiveSegLib.errors import Cancelled

    cancel = threading.Event()
    reporter = StageProgress("finetune", 10, None, cancel, clock=FakeClock())
    reporter.update(1)
    cancel.set()
    with pytest.raises(Cancelled):
        reporter.update(2)


def test_the_eta_counts_the_later_stages_of_the_run():
    # Fine-tuning's ETA is when the run ends: the prediction after it (in fine-tuning steps) is counted too.
    clock, events = FakeClock(), []
    reporter = StageProgress("finetune", 10, events.append, clock=clock, after_steps=5)
    for step in range(1, 11):
        clock.now += 2.0
        reporter.update(step)
    assert [e["eta_s"] for e in events] == pytest.approx([2.0 * (10 - s + 5) for s in range(1, 11)])


def test_segment_tells_fine_tuning_what_follows(phantom, monkeypatch):
    # The prediction of a whole volume in fine-tuning steps: a step is 3 passes over batch x patch^2 pixels.
    from ContrastiveSegLib import api
    from ContrastiveSegLib.training import finetune

    seen = []
    original = finetune.train_segmentation

    def spy(*args, after_steps=0.0, **kwargs):
        seen.append(after_steps)
        return original(*args, after_steps=after_steps, **kwargs)

    monkeypatch.setattr(api, "train_segmentation", spy)
    api.segment(phantom.image, phantom.sparse, steps=1, batch_size=2, preset="fast", device="cpu")
    api.finetune(phantom.image, phantom.sparse, steps=1, batch_size=2, preset="fast", device="cpu")
    slices, height, width = phantom.image.shape
    assert seen == [pytest.approx(slices * height * width / (3 * 2 * 96 ** 2)), 0.0]
