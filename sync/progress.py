"""Progress bars for long work on both command lines (model pulls, conversions,
quantization, many devices enrolled at once, benchmarks), drawn with rich on stderr.

Only for a person at a terminal: when stderr is not a terminal (a pipe, a file, a
service's journal) or ``--log-format json`` is on, :func:`progress` draws nothing at all,
so scripts and logs read exactly what they read before. A bar with a ``total`` counts
steps; without one it is a spinner with the time spent. The bar is removed when the work
ends (the command's own result line follows).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

#: Moves a bar on by a number of steps (no-op when nothing is drawn).
Advance = Callable[[float], None]

_quiet = False


def quiet_progress(quiet: bool = True) -> None:
    """Draw no progress from now on (``--log-format json`` sets this: stderr is a log)."""
    global _quiet
    _quiet = quiet


def drawn(stream: TextIO) -> bool:
    """Whether progress is drawn on ``stream``: a terminal, and not made quiet."""
    isatty = getattr(stream, "isatty", None)
    return not _quiet and callable(isatty) and bool(isatty())


@contextmanager
def progress(description: str, total: float | None = None, *,
             stream: TextIO | None = None) -> Iterator[Advance]:
    """A progress bar (with ``total``) or spinner for the work inside the ``with``.

    Args:
        description: What is going on, in a few words.
        total: How many steps the work has; ``None`` when that is not known.
        stream: Where to draw; default stderr. Nothing is drawn unless it is a terminal.

    Yields:
        ``advance(steps)``, to call as steps finish.
    """
    target = stream if stream is not None else sys.stderr
    if not drawn(target):
        yield _nothing
        return
    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn()]
    columns.append(TimeElapsedColumn())
    console = Console(file=target, force_terminal=True)
    # stdout is left alone: a command's results (a JSON line) never pass through the bar.
    with Progress(*columns, console=console, transient=True, redirect_stdout=False,
                  redirect_stderr=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda steps: bar.advance(task, steps)


def _nothing(steps: float) -> None:
    """The advance of a bar that is not drawn."""
