"""Runs that can be started, watched and stopped: a troubleshooting scenario, the demo.

The console starts these (and the CLI's `lab scenario run` runs scenarios through them), so
a run shows the same wherever it is watched. Rules of this module:

- A runner (`ScenarioRun`, `DemoRun`) runs one thing at a time, as an asyncio task on the
  running loop, on a fresh lab of its own: a new temporary directory for its state, PKI and
  phone files, and free ports (0), so it never collides with a `lab up` on the default
  ports. A start while a run is going is refused (`RunBusyError`); once it has ended, the
  runner may start again, and shows the new run from then on.
- What a run shows is kept on the runner as it happens: its state (`RunState`, with
  ``error`` when it failed), a scenario's timeline and report, the demo's chapters, their
  lines and whether it waits for Next. Every change is announced, to callbacks
  (`subscribe`) and to waiters (`changed`), so a page can push updates as they come.
- `cancel` stops the lab and the phones and removes the temporary directory, as the end of
  a run does; a directory under ``keep_under`` is kept for inspection.
- Nothing here formats for a terminal or a page: the scenario's report is
  lab.ops.scenarios.report's, the demo's lines are its RecordingNarrator's.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from lab.errors import LabError
from lab.net.config import LabConfig, default_config
from lab.net.netns import LabNetwork
from lab.ops.demo import (
    DEFAULT_SCALE,
    Chapter,
    DemoResult,
    RecordingNarrator,
    run_demo,
)
from lab.ops.scenarios import Observation, Scenario, get_scenario, run_scenario
from lab.ops.scenarios.framework import TimelineEntry
from lab.ops.scenarios.report import ScenarioReport, render_report, scenario_report, timeline_line
from lab.store.cab import DEFAULT_IMAGE_SIZE

log = logging.getLogger(__name__)

T = TypeVar("T")


class RunError(LabError):
    """A run is asked for what its state does not allow (Next when the demo does not wait,
    the result of a run that was cancelled or never started)."""


class RunBusyError(RunError):
    """A runner is asked to start while its run is still going."""


class RunState(enum.Enum):
    """Where a runner's run is."""

    READY = "ready"
    """Nothing started yet."""
    RUNNING = "running"
    DONE = "done"
    """Ended with a result (which may say that the outcome was not the expected one)."""
    FAILED = "failed"
    """Ended with an error, named in ``error``."""
    CANCELLED = "cancelled"


def free_ports(config: LabConfig) -> LabConfig:
    """``config`` on free ports (0) everywhere: a run never takes a running lab's ports."""
    return config.with_ports(dns=0, internal=0, external=0, edge=0, admin=0)


def fresh_lab(workdir: Path) -> LabConfig:
    """The embedded default lab on free ports with a PKI of its own in ``workdir``."""
    return free_ports(default_config()).with_pki_dir(workdir / "certs")


class _Runner(Generic[T]):
    """What both runners share: the task, its state, its temporary directory, the news."""

    def __init__(self, *, keep_under: Path | None = None) -> None:
        self.keep_under = keep_under
        self.state = RunState.READY
        self.error: str | None = None
        """What went wrong, when the state is FAILED."""
        self.workdir: Path | None = None
        """The run's directory (state, PKI, phones); removed at the end unless kept."""
        self.version = 0
        """Counts changes: `changed` waits for it to move on."""
        self.result: T | None = None
        self._exception: Exception | None = None
        self._task: asyncio.Task[None] | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._news = asyncio.Event()

    @property
    def running(self) -> bool:
        """Whether a run is going."""
        return self.state is RunState.RUNNING

    def describe(self) -> str:
        """What runs, in words (for messages)."""
        raise NotImplementedError

    # --- News ---------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` after every change; returns a function that unsubscribes."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    async def changed(self, seen: int) -> int:
        """Wait until ``version`` is past ``seen``; the version then."""
        while self.version <= seen:
            await self._news.wait()
        return self.version

    def _touch(self) -> None:
        self.version += 1
        news, self._news = self._news, asyncio.Event()
        news.set()
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:
                # A watcher's failure is its own: the run goes on.
                log.exception("a watcher of %s failed", self.describe())

    # --- The task -----------------------------------------------------------------------

    def _check_idle(self) -> None:
        if self.running:
            raise RunBusyError(
                f"{self.describe()} is still running: wait for it to end, or cancel it"
            )

    def _launch(self, prefix: str, work: Callable[[Path], Awaitable[T]]) -> asyncio.Task[None]:
        """Start ``work`` in a new directory; the caller has checked `_check_idle`."""
        loop = asyncio.get_running_loop()
        if self.keep_under is not None:
            self.keep_under.mkdir(parents=True, exist_ok=True, mode=0o700)
        workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=self.keep_under))
        self.state, self.error, self.result, self.workdir = RunState.RUNNING, None, None, workdir
        self._exception = None
        task = loop.create_task(self._main(workdir, work))
        task.add_done_callback(self._ended)
        self._task = task
        self._touch()
        return task

    async def _main(self, workdir: Path, work: Callable[[Path], Awaitable[T]]) -> None:
        ended = RunState.CANCELLED  # unless it ends otherwise
        try:
            self.result = await work(workdir)
            ended = RunState.DONE
        except Exception as exc:
            self._exception = exc
            self.error = str(exc) or type(exc).__name__
            ended = RunState.FAILED
        finally:
            # Still running until its directory is gone: a new run starts on a clean slate.
            try:
                if self.keep_under is None:
                    await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)
            finally:
                self.state = ended

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task is not self._task:
            return
        if self.state is RunState.RUNNING:
            # Cancelled before it began: its directory is still empty.
            if self.workdir is not None and self.keep_under is None:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.state = RunState.CANCELLED
        self._touch()

    async def wait(self) -> T:
        """The run's result once it has ended; the run's own error when it failed, RunError
        when it was cancelled or never started."""
        if self._task is None:
            raise RunError(f"{self.describe()} was never started")
        await asyncio.wait([self._task])
        if self._exception is not None:
            raise self._exception
        if self.result is None:
            raise RunError(f"{self.describe()} was cancelled")
        return self.result

    async def cancel(self) -> None:
        """Stop the run, if one is going, and wait until its lab is stopped and its
        directory removed."""
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        await asyncio.wait([task])

    async def _until_done(self, task: asyncio.Task[None]) -> T:
        """The run's result; the run is cancelled with its caller."""
        try:
            await asyncio.wait([task])
        finally:
            if not task.done():
                await self.cancel()
        return await self.wait()


# --- A troubleshooting scenario -----------------------------------------------------------


class ScenarioRun(_Runner[Observation]):
    """Runs troubleshooting scenarios one at a time, each on a fresh lab, as `lab scenario
    run` does: the timeline as it happens, the report `lab scenario run` prints at the end.

    ``config``: the lab to run on, used as it is; by default the embedded one on free ports
    with a PKI of its own (the scenarios' outcomes name its domains). ``keep_under``: keep
    each run's directory under it (``lab scenario run --state-dir``) instead of removing it.
    """

    def __init__(
        self,
        config: LabConfig | None = None,
        *,
        keep_under: Path | None = None,
        network: LabNetwork | None = None,
        capture: str | None = None,
    ) -> None:
        super().__init__(keep_under=keep_under)
        self.config = config
        # The lab's own network (`lab scenario run --netns`) and a capture's name in it.
        self.network = network
        self.capture = capture
        self.scenario: Scenario | None = None
        self.fault = True
        self.scale: float | None = None
        """Phone seconds per real second, or None on the loop's own time."""
        self.timeline: list[TimelineEntry] = []
        """The timeline so far, in the order it happened."""

    def describe(self) -> str:
        """What runs, in words."""
        return f"scenario {self.scenario.name}" if self.scenario else "no scenario"

    def start(
        self,
        scenario: Scenario | str,
        *,
        fault: bool = True,
        scale: float | None = None,
        loop_time: bool = False,
    ) -> asyncio.Task[None]:
        """Start running ``scenario`` (or the catalogue's scenario of that name): on a clock
        ``scale`` times as fast as real time (default: the scenario's own), or on the loop's
        own time with ``loop_time`` (tests under looptime). ``fault=False`` leaves the fault
        out. RunBusyError while a run is going; ScenarioError for an unknown name."""
        chosen = get_scenario(scenario) if isinstance(scenario, str) else scenario
        self._check_idle()
        self.scenario, self.fault, self.timeline = chosen, fault, []
        self.scale = None if loop_time else (scale or chosen.scale)
        return self._launch(f"scenario-{chosen.name}-", self._run)

    async def run(
        self, scenario: Scenario | str, *, fault: bool = True, scale: float | None = None
    ) -> Observation:
        """Start ``scenario`` (as `start`) and return its observation; a cancel of the
        caller cancels the run."""
        return await self._until_done(self.start(scenario, fault=fault, scale=scale))

    async def _run(self, workdir: Path) -> Observation:
        assert self.scenario is not None
        config = self.config if self.config is not None else fresh_lab(workdir)
        with quiet_resets():
            return await run_scenario(
                self.scenario,
                config,
                workdir,
                fault=self.fault,
                scale=self.scale,
                on_timeline=self._entry,
                network=self.network,
                capture=self.capture,
            )

    def _entry(self, entry: TimelineEntry) -> None:
        self.timeline.append(entry)
        self._touch()

    @property
    def observation(self) -> Observation | None:
        """What the run showed, once it is done."""
        return self.result

    @property
    def report(self) -> ScenarioReport | None:
        """The report as data, once the run is done."""
        return scenario_report(self.result) if self.result is not None else None

    @property
    def text(self) -> str | None:
        """The report as `lab scenario run` prints it, once the run is done."""
        report = self.report
        return render_report(report) if report is not None else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form of the run as it is now: the timeline's offsets count from its
        first entry (the setup, made as phone time begins) until the report's are known."""
        scenario = self.scenario
        start = self.timeline[0].time if self.timeline else 0.0
        report = self.report
        return {
            "state": self.state.value,
            "error": self.error,
            "scenario": scenario.as_dict() if scenario is not None else None,
            "with_fault": self.fault,
            "scale": self.scale,
            "timeline": [
                {"offset": line.offset, "who": line.who, "what": line.what}
                for line in (timeline_line(e, start) for e in self.timeline)
            ],
            "report": report.as_dict() if report is not None else None,
        }


class _ResetFilter(logging.Filter):
    """Drops aiohttp's report of a write to a connection an immediate maintenance reset."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionResetError)


@contextlib.contextmanager
def quiet_resets() -> Iterator[None]:
    """Keep aiohttp from reporting connections reset under it while the block runs."""
    # Cutting transfers is the point of a maintenance scenario; the server's handler then
    # fails to write and aiohttp prints a traceback that would bury the scenario's report.
    logger = logging.getLogger("aiohttp.server")
    quiet = _ResetFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


# --- The demo -----------------------------------------------------------------------------


class DemoRun(_Runner[DemoResult]):
    """Runs the demo (`make demo`'s five chapters), one chapter at a time when stepping:
    each chapter's lines as they are told, and a wait for `next` between chapters.

    ``config``: the lab and fleet, used as they are; by default the embedded lab on free
    ports, its PKI made fresh in the run's state directory (as `lab demo` makes it).
    ``width``: the columns the lines are laid out in (tables wrap their cells to fit).
    """

    def __init__(self, config: LabConfig | None = None, *, width: int = 120) -> None:
        super().__init__()
        self.config = config
        self.width = width
        self.step = True
        self.narrator = RecordingNarrator(width=width)
        self.waiting_for: Chapter | None = None
        """The chapter `next` starts, while the demo waits for it (its lines empty)."""
        self._go_on = asyncio.Event()

    def describe(self) -> str:
        """What runs, in words."""
        return "the demo"

    def start(
        self,
        *,
        step: bool = True,
        scale: float | None = DEFAULT_SCALE,
        image_size: int = DEFAULT_IMAGE_SIZE,
    ) -> asyncio.Task[None]:
        """Start the demo: waiting for `next` before each chapter but the first when
        ``step``, on a clock ``scale`` times as fast as real time (None: the loop's own time,
        for tests under looptime), with images of ``image_size`` bytes. RunBusyError while
        a run is going."""
        self._check_idle()
        self.step, self.waiting_for = step, None
        self.narrator = RecordingNarrator(width=self.width, on_change=self._touch)

        async def demo(workdir: Path) -> DemoResult:
            state = workdir / "state"
            config = self.config
            if config is None:
                # A PKI made fresh with the state, as `lab demo` makes it.
                config = free_ports(default_config()).with_pki_dir(state / "certs")
            return await run_demo(
                config,
                state,
                self.narrator,
                scale=scale,
                image_size=image_size,
                between_chapters=self._between_chapters,
            )

        return self._launch("lab-demo-", demo)

    @property
    def preamble(self) -> list[str]:
        """The lines told before the first chapter: the lab, its endpoints, the clock."""
        return self.narrator.preamble

    @property
    def chapters(self) -> list[Chapter]:
        """The chapters told so far, each with its lines."""
        return self.narrator.chapters

    @property
    def current(self) -> Chapter | None:
        """The chapter being told (or the last one told)."""
        return self.chapters[-1] if self.chapters else None

    @property
    def waiting(self) -> bool:
        """Whether the demo waits for `next`."""
        return self.waiting_for is not None

    def next(self) -> None:
        """Go on with the next chapter; RunError when the demo does not wait for it."""
        if self.waiting_for is None:
            raise RunError(f"the demo is {self.state.value} and waits for no next chapter")
        self._go_on.set()

    async def _between_chapters(self, number: int, title: str) -> None:
        if not self.step:
            return
        self._go_on = asyncio.Event()
        self.waiting_for = Chapter(number, title)
        self._touch()
        try:
            await self._go_on.wait()
        finally:
            self.waiting_for = None
        # The news that it goes on is the chapter's start, told next.

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form of the run as it is now."""
        result = self.result
        waiting = self.waiting_for
        return {
            "state": self.state.value,
            "error": self.error,
            "step": self.step,
            "preamble": list(self.preamble),
            "chapters": [
                {"number": c.number, "title": c.title, "lines": list(c.lines)}
                for c in self.chapters
            ],
            "current": self.current.number if self.current is not None else None,
            "waiting_for": (
                {"number": waiting.number, "title": waiting.title} if waiting else None
            ),
            "ok": result.ok if result is not None else None,
            "result": result.as_dict() if result is not None else None,
        }
