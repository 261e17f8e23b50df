"""Feedback on long work (issue 12): ``cloud-hub devices add --from FILE`` draws a bar for
a person at a terminal, and nothing but its summary line when stderr is a pipe; stdout's
CSV is the same either way."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from cloud_hub.cli import main
from tests.cloud_hub.hub_helpers import SECRET

pytestmark = pytest.mark.integration


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLOUD_HUB_DATA_DIR", str(tmp_path / "hub"))
    monkeypatch.setenv("CLOUD_HUB_SECRET_KEY", SECRET)
    monkeypatch.setenv("CLOUD_HUB_BROKER_CONTROL", "none")
    listing = tmp_path / "fleet.csv"
    listing.write_text("".join(f"cam-{i},lobby\n" for i in range(5)))
    return listing


def test_bulk_enrollment_draws_a_bar_on_a_terminal_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    listing = _env(tmp_path, monkeypatch)
    assert main(["devices", "add", "--from", str(listing)]) == 0
    piped = capsys.readouterr()
    assert piped.err == "5 registered, 0 existed, 0 refused (passwords are shown once)\n"
    assert len(piped.out.splitlines()) == 6

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    (tmp_path / "bundles").mkdir()
    again = tmp_path / "more.csv"
    again.write_text("".join(f"cam-{i},lobby\n" for i in range(5, 8)))
    assert main(["devices", "add", "--from", str(again), "--bundle",
                 str(tmp_path / "bundles")]) == 0
    drawn = terminal.getvalue()
    assert "registering 3 device(s)" in drawn and "3/3" in drawn
    assert "writing 3 enrollment bundle(s)" in drawn
    assert drawn.rstrip().endswith("3 registered, 0 existed, 0 refused (passwords are "
                                   "shown once)")
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "id,group,status,password" and len(out.splitlines()) == 4
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == [
        "cam-5.json", "cam-6.json", "cam-7.json"]
