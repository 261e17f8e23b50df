"""Progress bars (issue 12): drawn for a person at a terminal, nothing at all otherwise."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from sync import progress
from sync.progress import quiet_progress

pytestmark = pytest.mark.unit


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _not_quiet() -> Iterator[None]:
    quiet_progress(False)
    yield
    quiet_progress(False)


def test_a_terminal_gets_a_bar_with_counts() -> None:
    terminal = _Terminal()
    with progress("registering 3 device(s)", total=3, stream=terminal) as advance:
        for _ in range(3):
            advance(1)
    drawn = terminal.getvalue()
    assert "registering 3 device(s)" in drawn and "3/3" in drawn


def test_a_pipe_or_a_file_gets_nothing() -> None:
    pipe = io.StringIO()
    with progress("pulling blazeface-short", stream=pipe) as advance:
        advance(1)
    assert pipe.getvalue() == ""


def test_json_logs_keep_even_a_terminal_free_of_bars() -> None:
    quiet_progress()
    terminal = _Terminal()
    with progress("converting", stream=terminal) as advance:
        advance(1)
    assert terminal.getvalue() == ""
