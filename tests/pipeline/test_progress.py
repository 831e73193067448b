"""The console's progress bars: redrawn in place on a terminal, plain periodic lines elsewhere."""

from __future__ import annotations

import io
import time

import pytest

from embedeval.pipeline.progress import Progress, format_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_shows_counts_parts_rate_and_eta() -> None:
    clock = FakeClock()
    lines: list[str] = []
    console = Progress(lines.append, every_s=3600, clock=clock)
    bar = console.task("embed clip", 400, parts={"image": 100, "text": 300})
    clock.now += 10
    bar.advance(100, part="image")
    bar.advance(100, part="text")
    line = bar.line(clock.now)
    assert line == "  embed clip: 200/400 items (50%; image 100/100, text 100/300), 20 items/s, ETA 10s"
    clock.now += 10
    bar.update(400, {"image": 100, "text": 300})
    bar.finish()
    assert lines[-1] == "  embed clip: 400/400 items (image 100/100, text 300/300) in 20.0s, 20 items/s"
    assert all("\r" not in line for line in lines)


def test_counts_over_the_total_are_clamped_and_a_failed_stage_says_so() -> None:
    clock = FakeClock()
    lines: list[str] = []
    console = Progress(lines.append, every_s=3600, clock=clock)
    bar = console.task("score", 10, unit="units")
    clock.now += 2
    bar.update(12)  # a retried batch counted twice
    assert bar.line(clock.now).startswith("  score: 10/10 units (100%)")
    bar.finish(stopped=True)
    bar.finish()  # idempotent: one last line only
    assert lines == ["  score: 10/10 units STOPPED after 2.0s, 5.0 units/s"]


def test_lines_mode_prints_a_line_every_few_seconds_even_without_progress() -> None:
    lines: list[str] = []
    console = Progress(lines.append, every_s=0.05)
    bar = console.task("embed slow-model", 10)
    deadline = time.monotonic() + 5
    while len(lines) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    bar.finish()
    periodic = lines[:-1]
    assert len(periodic) >= 3, lines
    assert all(line.startswith("  embed slow-model: 0/10 items (0%)") and "ETA ?" in line for line in periodic)
    assert " in " in lines[-1]
    count = len(lines)
    time.sleep(0.2)
    assert len(lines) == count  # the ticker stops with the bar


def test_poll_feeds_the_bar_and_its_errors_are_ignored() -> None:
    lines: list[str] = []
    calls = {"n": 0}

    def poll() -> tuple[int, dict[str, int]]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("counter not up yet")
        return 7, {"image": 7}

    console = Progress(lines.append, every_s=0.05)
    bar = console.task("embed m", 10, parts={"image": 10}, poll=poll)
    deadline = time.monotonic() + 5
    while not any("7/10" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.02)
    bar.finish()
    assert any("7/10 items (70%; image 7/10)" in line for line in lines), lines


def test_terminal_mode_redraws_in_place_and_keeps_messages_above_the_bar() -> None:
    clock = FakeClock()
    out = FakeTTY()
    console = Progress(stream=out, redraw_s=0.0, clock=clock)
    assert console.tty
    bar = console.task("score", 4, unit="units")
    clock.now += 1
    bar.update(1)
    console.echo("a message")
    clock.now += 1
    bar.update(4)
    bar.finish()
    text = out.getvalue()
    assert "\r\x1b[K  score: [" in text            # drawn with a bar graphic, in place
    assert "\r\x1b[Ka message\n" in text           # the bar line is cleared before a message
    assert text.endswith("  score: 4/4 units in 2.0s, 2.0 units/s\n")
    assert text.count("\n") == 2                   # the message and the final line; redraws add none


def test_a_pipe_is_not_a_terminal_and_details_need_verbose() -> None:
    out = io.StringIO()
    quiet = Progress(stream=out)
    assert not quiet.tty
    quiet.detail("per-unit timing")
    quiet.echo("shown")
    Progress(stream=out, verbose=True).detail("verbose detail")
    assert out.getvalue() == "shown\nverbose detail\n"


def test_stage_times_make_the_summary_line() -> None:
    clock = FakeClock()
    console = Progress(lambda _: None, clock=clock)
    with console.stage("embed"):
        clock.now += 12.34
    with console.stage("score"):
        clock.now += 5
    assert console.timing_line() == "done in 17.3s (embed 12.3s, score 5.0s)"
    assert [format_seconds(s) for s in (3, 65, 7322, float("inf"))] == ["3s", "1m05s", "2h02m", "?"]


@pytest.mark.usefixtures("ray_local")
def test_one_row_counter_serves_the_drivers_runs_and_each_run_drops_its_keys() -> None:
    """A counter actor is a worker process: embed runs of one driver share one, each counting under keys of
    its own, dropped when the run ends. A counter that no longer answers is replaced."""
    import ray

    from embedeval.pipeline.counter import poller
    from embedeval.pipeline.embed import RunCounter

    def counts(counter, key: str) -> tuple[int, dict[str, int]]:  # noqa: ANN001
        # the display's 2 s timeout is too short for a counter actor still starting on a busy machine
        return poller(counter, key, timeout_s=120)()

    first, second = RunCounter(), RunCounter()
    actor = first.get()
    assert second.get() is actor and first.key("m") != second.key("m")
    actor.add.remote(first.key("m"), {"image": 3})
    actor.add.remote(second.key("m"), {"image": 5, "text": 1})
    assert counts(actor, first.key("m")) == (3, {"image": 3})
    first.stop()
    assert counts(actor, first.key("m")) == (0, {})
    assert counts(actor, second.key("m")) == (6, {"image": 5, "text": 1})
    second.stop()

    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 120   # the kill is asynchronous: until it lands, the actor still answers
    while time.monotonic() < deadline:
        try:
            ray.get(actor.snapshot.remote(""), timeout=120)
        except ray.exceptions.RayActorError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the killed counter still answers")
    replaced = RunCounter()
    assert replaced.get() is not actor
    replaced.get().add.remote(replaced.key("m"), {"sketch": 2})
    assert counts(replaced.get(), replaced.key("m")) == (2, {"sketch": 2})
    replaced.stop()
