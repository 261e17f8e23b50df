"""The default install is the agent alone; the hub's libraries come with the ``[hub]`` extra,
ONNX Runtime with ``[onnx]``.

The agent's dependency closure is computed from ``pyproject.toml`` and the installed
distributions' metadata. A fresh interpreter then imports every module of the agent's
packages and runs ``edge-agent doctor`` with every other third-party distribution blocked,
the hub's included: an agent module that imports something a device install lacks fails
here, not on a device. The arm64 target (``make test-arm64``) fails, with its reason, on
a machine where it cannot emulate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parent.parent
AGENT_PACKAGES = ("sync", "models", "hardware", "edge_agent")
NEVER_ON_A_DEVICE = ("cloud_hub", "bench")
# Installed beside the project with --no-deps (norfair's numpy < 2 pin is not real,
# filterpy's matplotlib is for plots; see the Makefile): part of every agent install.
ALSO_INSTALLED = ("norfair", "filterpy")

_IMPORT_EVERYTHING = """
import importlib, importlib.abc, json, pkgutil, sys

BLOCKED = frozenset(json.loads(sys.argv[1]))
for name in BLOCKED:  # absent as on a device: importlib.util.find_spec says None
    sys.modules.setdefault(name, None)
AT_START = frozenset(sys.modules)  # what site's .pth files loaded (setuptools' hack)


class BlockOutsideTheAgent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"not in the agent-only install: {name}", name=name)
        return None


sys.meta_path.insert(0, BlockOutsideTheAgent())
for package in json.loads(sys.argv[2]):
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        if not info.name.endswith(".__main__"):  # that one runs the CLI
            importlib.import_module(info.name)
from edge_agent.cli import main

status = main(["--store", sys.argv[3], "doctor", "--json"])
print(json.dumps(sorted(BLOCKED & {m.partition(".")[0] for m in set(sys.modules) - AT_START})))
sys.exit(status)
"""


def _project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        project: dict[str, object] = tomllib.load(file)["project"]
    return project


def _closure(requirements: list[str]) -> set[str]:
    """Canonical names of the distributions ``requirements`` pull in, transitively."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        extras = requirement.extras or {""}
        if name in seen and not requirement.extras:
            continue
        seen.add(name)
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for text in distribution.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return seen


def _extras() -> dict[str, list[str]]:
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)
    return extras


def _base() -> list[str]:
    base = _project()["dependencies"]
    assert isinstance(base, list)
    return base


def test_the_default_install_has_no_hub_library() -> None:
    base = _closure(_base())
    hub_direct = {canonicalize_name(Requirement(r).name) for r in _extras()["hub"]}
    assert hub_direct >= {"fastapi", "sqlalchemy", "uvicorn", "psycopg", "pydantic-settings"}
    assert not hub_direct & base, f"the agent-only install pulls {sorted(hub_direct & base)}"
    assert "starlette" not in base


def test_dev_keeps_every_extra() -> None:
    name = _project()["name"]
    dev = next(Requirement(r) for r in _extras()["dev"] if Requirement(r).name == name)
    assert set(_extras()) - {"dev"} <= dev.extras


def test_the_agent_imports_nothing_outside_its_own_install(tmp_path: Path) -> None:
    allowed = _closure(_base()) | set(ALSO_INSTALLED)
    blocked = set(NEVER_ON_A_DEVICE)
    for module, distributions in metadata.packages_distributions().items():
        if module in AGENT_PACKAGES or not module.isidentifier():
            continue
        if not any(canonicalize_name(d) in allowed for d in distributions):
            blocked.add(module)
    # The test means something only if it blocks the hub's libraries and the dev tools.
    assert {"fastapi", "sqlalchemy", "uvicorn", "psycopg", "pydantic_settings", "starlette",
            "skimage", "pytest", "cloud_hub", "onnxruntime"} <= blocked
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERYTHING, json.dumps(sorted(blocked)),
         json.dumps(AGENT_PACKAGES), str(tmp_path / "store")],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    *report, imported_blocked = result.stdout.strip().splitlines()
    assert json.loads(imported_blocked) == []
    hardware = json.loads("\n".join(report))["hardware"]
    assert hardware["architecture"]
    assert hardware["runtimes"]["onnxruntime_providers"] == []  # the `onnx` extra's


def test_the_arm64_target_fails_with_its_reason_where_it_cannot_emulate() -> None:
    command = [str(ROOT / "packaging" / "arm64" / "emulated-root"), "check"]
    if os.geteuid() == 0:  # drop to nobody: no root, no chroot, no emulated root
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("test-arm64: FAILED: needs root"), result.stderr


def test_the_hub_without_its_extra_says_what_to_install() -> None:
    script = (
        "import importlib.abc, sys\n"
        "class NoFastAPI(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'fastapi':\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, NoFastAPI())\n"
        "from cloud_hub.cli import main\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=False, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: the cloud hub needs fastapi, which the agent-only install "
        "leaves out: pip install 'edge-cloud-runtime[hub]'"
    )
