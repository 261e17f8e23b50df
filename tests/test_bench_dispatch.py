"""``python -m bench NAME --help`` is the benchmark's own help, not the dispatcher's."""

from __future__ import annotations

import pytest

from bench.__main__ import BENCHMARKS, main

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_help_after_a_name_reaches_that_benchmark(
        name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m bench {name} ")


def test_an_unknown_benchmark_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["warp-drive"])
    assert exited.value.code == 2
    assert "invalid choice: 'warp-drive'" in capsys.readouterr().err
