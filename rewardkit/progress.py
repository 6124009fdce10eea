"""Progress of long work, on stderr: a live bar on a terminal, plain lines in a log.

Progress never goes to stdout, so ``--json`` output stays one clean JSON document. When stderr is a
terminal, :class:`Progress` draws a rich bar; otherwise (a log file, ``dvc repro``, CI) it prints one
line every ~10 % of the work (and at least every ``interval`` seconds), never bar frames.

:func:`log_progress` routes the ``rewardkit`` loggers' INFO lines (the Hi-GRPO trainer's one line per
step, ...) to one stream exactly once, whatever other libraries did to the root logger.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, TextIO

_HANDLER_FLAG = "_rewardkit_progress"


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stderr) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def log_progress(stream: TextIO | None = None, fmt: str = "%(message)s", level: int = logging.INFO,
                 name: str = "rewardkit") -> logging.Handler:
    """Send the ``name`` logger's records at ``level`` and above to ``stream`` (default: stderr), once.

    The logger stops propagating to the root logger: a library that called ``logging.basicConfig`` (or
    ``logging.info`` on the root, which does so implicitly; open_clip does) would otherwise print every
    line a second time. Calling this again replaces the earlier handler instead of adding one.
    """
    logger = logging.getLogger(name)
    for h in list(logger.handlers):
        if getattr(h, _HANDLER_FLAG, False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    setattr(handler, _HANDLER_FLAG, True)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler


def _fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class _LineTask:
    def __init__(self, description: str, total: int | None) -> None:
        self.description = description
        self.total = total
        self.completed = 0
        self.t0 = time.perf_counter()
        self.last_line = self.t0
        self.last_done = 0


class LineProgress:
    """The non-terminal stand-in for a bar: ``label n/N (p %), elapsed, ~left`` lines on ``stream``,
    one every ~10 % of ``total`` (and at least every ``interval`` seconds), and one at the end.

    Same calls as rich's ``Progress`` where rewardkit uses it: ``add_task``, ``update``, a context manager.
    """

    def __init__(self, label: str, stream: TextIO | None = None, interval: float = 10.0, disable: bool = False):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.disable = disable
        self.tasks: list[_LineTask] = []

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        for t in self.tasks:
            if t.completed != t.last_done:
                self._line(t)

    def add_task(self, description: str = "", total: int | None = None, **_: Any) -> int:
        self.tasks.append(_LineTask(description, total))
        return len(self.tasks) - 1

    def update(self, task: int, *, advance: int | None = None, completed: int | None = None,
               total: int | None = None, description: str | None = None, **_: Any) -> None:
        t = self.tasks[task]
        if total is not None:
            t.total = total
        if description is not None:
            t.description = description
        if completed is not None:
            t.completed = completed
        if advance:
            t.completed += advance
        every = max(1, math.ceil(t.total / 10)) if t.total else 1
        now = time.perf_counter()
        if (t.completed // every > t.last_done // every or now - t.last_line >= self.interval
                or (t.total and t.completed >= t.total and t.last_done < t.total)):
            self._line(t)

    def _line(self, t: _LineTask) -> None:
        t.last_line, t.last_done = time.perf_counter(), t.completed
        if self.disable:
            return
        elapsed = t.last_line - t.t0
        if t.total:
            pct = 100 * t.completed / t.total
            left = elapsed / t.completed * (t.total - t.completed) if 0 < t.completed < t.total else None
            text = f"{self.label} {t.completed}/{t.total} ({pct:.0f}%), {_fmt_seconds(elapsed)}"
            if left is not None:
                text += f", ~{_fmt_seconds(left)} left"
        else:
            text = f"{self.label} {t.completed}, {_fmt_seconds(elapsed)}"
        print(text, file=self.stream, flush=True)


def progress_bar(label: str, *, disable: bool = False, stream: TextIO | None = None, interval: float = 10.0):
    """A progress display for ``label`` work on stderr: rich's bar on a terminal, :class:`LineProgress`
    otherwise. Use as ``with progress_bar("render") as bar: task = bar.add_task("", total=n); ...
    bar.update(task, advance=1, description=name)``."""
    stream = stream if stream is not None else sys.stderr
    if not is_terminal(stream):
        return LineProgress(label, stream=stream, interval=interval, disable=disable)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.description}"))
    return Progress(*columns, console=Console(file=stream), disable=disable, transient=False)


__all__ = ["LineProgress", "is_terminal", "log_progress", "progress_bar"]
