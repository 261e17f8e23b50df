"""The systemd units of both services: rated at most 2.0 by ``systemd-analyze security``,
clean under ``systemd-analyze verify``, the same as the ones in packaging/, and laid out
with their user and folders by ``install-service --root`` (issue 12: the agent's unit was
rated 3.5 with no syscall filter, no memory or CPU limit, and nothing installed it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_hub.system_service import hub_service
from edge_agent.system_service import agent_service
from sync import ServiceInstallError, SystemService, install_service, uninstall_service

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MAX_EXPOSURE = 2.0
SERVICES = {"edge-agent": agent_service, "cloud-hub": hub_service}

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def write_unit(tmp_path: Path, name: str) -> Path:
    unit = tmp_path / f"{name}.service"
    unit.write_text(SERVICES[name](program=BIN / name).unit)
    return unit


@needs_systemd_analyze
@pytest.mark.parametrize("name", sorted(SERVICES))
def test_unit_exposure_is_at_most_2(tmp_path: Path, name: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager",
         str(write_unit(tmp_path, name))], capture_output=True, text=True, check=False)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout
    # Only the two calls of @resources the runtimes need (tests/test_syscall_filter.py).
    flagged = re.findall(r"✗ (SystemCallFilter=\S+)", result.stdout)
    assert flagged == ["SystemCallFilter=~@resources"], result.stdout


@needs_systemd_analyze
@pytest.mark.parametrize("name", sorted(SERVICES))
def test_unit_verifies_clean(tmp_path: Path, name: str) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(write_unit(tmp_path, name))],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_packaged_unit_is_what_install_service_writes(name: str) -> None:
    program = Path("/opt") / name / "bin" / name
    assert (ROOT / "packaging" / f"{name}.service").read_text() == SERVICES[name](
        program=program).unit


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_units_limit_memory_cpu_and_syscalls(name: str) -> None:
    unit = SERVICES[name](program=BIN / name).unit
    for setting in ("MemoryMax=", "CPUQuota=", "SystemCallFilter=@system-service",
                    "SystemCallFilter=~@privileged @resources", "NoNewPrivileges=yes"):
        assert setting in unit


def laid_out(tmp_path: Path, service: SystemService) -> list[list[str]]:
    commands: list[list[str]] = []

    def run(command: object) -> None:
        commands.append(list(command))  # type: ignore[call-overload]

    install_service(service, tmp_path, run=run)
    return commands


def test_install_under_a_root_makes_user_folders_and_unit_and_no_systemctl(
    tmp_path: Path,
) -> None:
    service = agent_service(root=tmp_path, program=BIN / "edge-agent")
    commands = laid_out(tmp_path, service)
    assert commands == [["systemd-sysusers", f"--root={tmp_path}",
                         str(tmp_path / "etc/sysusers.d/edge-agent.conf")]]
    unit = (tmp_path / "etc/systemd/system/edge-agent.service").read_text()
    assert f"--config {tmp_path}/etc/edge-agent/agent.toml" in unit
    for folder, mode in (("etc/edge-agent", 0o750), ("var/lib/edge-agent", 0o750),
                         ("var/cache/edge-agent", 0o750)):
        assert (tmp_path / folder).stat().st_mode & 0o777 == mode
    sysusers = (tmp_path / "etc/sysusers.d/edge-agent.conf").read_text()
    assert sysusers.startswith('u edge-agent - "Edge inference agent"')
    assert "m edge-agent video" in sysusers

    removed = uninstall_service(service, tmp_path, purge=True, run=lambda c: None)
    assert not (tmp_path / "etc/systemd/system/edge-agent.service").exists()
    assert not (tmp_path / "var/lib/edge-agent").exists() and removed


def test_hub_unit_serves_with_its_settings_file() -> None:
    service = hub_service(program=BIN / "cloud-hub")
    assert service.unit_name == "cloud-hub.service"
    assert "ExecStart=" + str(BIN / "cloud-hub") + " serve --settings /etc/cloud-hub/hub.env" \
        in service.unit


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None,
                    reason="systemd-sysusers is not installed")
def test_hub_install_service_cli_lays_out_settings(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "cloud-hub"), "install-service", "--root",
                             str(tmp_path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    settings = tmp_path / "etc/cloud-hub/hub.env"
    assert settings.stat().st_mode & 0o777 == 0o640
    assert "CLOUD_HUB_MODE=production" in settings.read_text()
    # The hub's broker user, for `cloud-hub broker init` to write into the broker.
    broker_init = subprocess.run(
        [str(BIN / "cloud-hub"), "--settings", str(settings), "broker", "init",
         str(tmp_path / "mosquitto")], capture_output=True, text=True, check=False)
    assert broker_init.returncode == 0, broker_init.stderr
    clients = json.loads((tmp_path / "mosquitto/dynamic-security.json").read_text())["clients"]
    assert [client["username"] for client in clients] == ["hub"]
    assert "cloud-hub:" in (tmp_path / "etc/passwd").read_text()
    assert (tmp_path / "etc/systemd/system/cloud-hub.service").exists()


def test_a_file_error_is_one_install_error_naming_the_path(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    with pytest.raises(ServiceInstallError, match="not-a-folder"):
        install_service(agent_service(root=blocked, program=BIN / "edge-agent"), blocked,
                        run=lambda command: None)
