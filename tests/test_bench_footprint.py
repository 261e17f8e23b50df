"""``python -m bench footprint`` reports what a device install costs (issue 12): its last
line is JSON with ``install_mb``, ``rss_mb`` and ``cold_start_s``. Figures are reported,
never judged here; this checks that they are measured."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_footprint_reports_install_size_memory_and_cold_start() -> None:
    # This environment stands in for the agent-only venv (building one needs PyPI).
    result = subprocess.run(
        [sys.executable, "-m", "bench", "footprint", "--venv", sys.prefix, "--seconds", "1",
         "--fps", "5"], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["install_mb"] > 1 and report["rss_mb"] > 1
    assert report["baseline_rss_mb"] > 1
    assert report["cold_start_s"] > 0 and report["inferences"] >= 1
