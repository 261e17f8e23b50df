"""Installing a program as a systemd service: its user, folders and unit.

Both command lines use it (``edge-agent install-service``, ``cloud-hub
install-service``), as Greengrass's installer sets up its system service: each package
describes its service as a value (:class:`SystemService`: the unit's text, the folders
and their modes, the user's groups) and this module lays it out and hands it to systemd.

The user is made by ``systemd-sysusers`` from a ``sysusers.d`` file, so that it is made
the same way on a running system and in an image. ``--root DIR`` lays everything out
under ``DIR`` instead of ``/``, with every path in the unit and the configuration
pointing into ``DIR`` (the layout runs in place: that is how the tests start a service
from its installed unit), and runs no ``systemctl``.

This is one of the few modules of the package that touch files and processes (with
``sync/tls.py`` and ``sync/cli_common.py``), as both command lines share it.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sync.errors import ServiceInstallError

Run = Callable[[Sequence[str]], None]

# The sandbox both units run in (``systemd-analyze security`` at most 2.0 with either
# unit's own device settings). The syscall filter is proved against LiteRT and ONNX
# Runtime by tests/test_syscall_filter.py, which applies these very lines.
SANDBOX = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RemoveIPC=yes
LockPersonality=yes
# Runtimes and delegates may JIT-compile kernels into writable+executable memory.
MemoryDenyWriteExecute=no
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
# ...but for two calls of @resources that LiteRT and ONNX Runtime make and die without:
# mbind on their memory arenas, and sched_setaffinity on their thread pool's threads.
SystemCallFilter=mbind sched_setaffinity
UMask=0077
"""
SYSUSERS_DIR = Path("/etc/sysusers.d")  # the administrator's, not the package manager's
UNIT_DIR = Path("/etc/systemd/system")


@dataclass(frozen=True, slots=True)
class ServiceFolder:
    """A folder the service needs.

    Attributes:
        path: Where it is on the target system (``/etc/edge-agent``).
        mode: Its mode.
        writable: Owned by the service's user (state, cache); otherwise owned by root
            with the service's group (configuration the service may read, not change).
    """

    path: Path
    mode: int
    writable: bool


@dataclass(frozen=True, slots=True)
class SystemService:
    """One service as it is installed.

    Attributes:
        name: The unit's and the system user's name.
        description: The user's description (``sysusers.d``).
        home: The user's home (its state folder).
        unit: The unit file's text, paths already under the install root.
        folders: Folders to create, on the target system (``/`` based).
        groups: Groups the user joins (``video`` for cameras), made where missing.
    """

    name: str
    description: str
    home: Path
    unit: str
    folders: tuple[ServiceFolder, ...]
    groups: tuple[str, ...] = ()

    def sysusers(self) -> str:
        """The ``sysusers.d`` file that makes the user and its group memberships."""
        lines = [f'u {self.name} - "{self.description}" {self.home} /usr/sbin/nologin']
        lines += [f"m {self.name} {group}" for group in self.groups]
        return "\n".join(lines) + "\n"

    @property
    def unit_name(self) -> str:
        """``NAME.service``."""
        return f"{self.name}.service"


def memory_high(memory_max: str) -> str:
    """``MemoryHigh=`` for a ``MemoryMax=`` of ``memory_max`` (``768M``, ``4G``): three
    quarters of it, where the kernel starts reclaiming before the hard cap.

    Raises:
        ValueError: ``memory_max`` is not a number of ``M`` or ``G``.
    """
    units = {"M": 1, "G": 1024}
    number, unit = memory_max[:-1], memory_max[-1:]
    if not number.isdigit() or unit not in units or int(number) == 0:
        raise ValueError(f"memory limit {memory_max!r} is not like 768M or 4G")
    return f"{int(number) * units[unit] * 3 // 4}M"


def under(root: Path, path: Path) -> Path:
    """``path`` of the target system, as laid out under ``root``."""
    return root / path.relative_to("/") if path.is_absolute() else root / path


def run_command(command: Sequence[str]) -> None:
    """Run a system command; raise with its output when it fails.

    Raises:
        ServiceInstallError: It is not installed or exited non-zero.
    """
    try:
        subprocess.run(list(command), check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise ServiceInstallError(f"{command[0]} is not installed (it comes with "
                                  "systemd)") from exc
    except subprocess.CalledProcessError as exc:
        raise ServiceInstallError(f"{' '.join(command)} failed: "
                                  f"{(exc.stderr or exc.stdout).strip()}") from exc


def _os_errors(step: Callable[..., list[str]]) -> Callable[..., list[str]]:
    """Turn a file error of ``step`` into :class:`ServiceInstallError`, naming the path
    (on ``/`` the commonest is not being root)."""
    @functools.wraps(step)
    def wrapped(*args: Any, **kwargs: Any) -> list[str]:
        try:
            return step(*args, **kwargs)
        except OSError as exc:
            raise ServiceInstallError(f"{exc.filename or 'a file'}: {exc.strerror} (installing "
                                      "a service on / needs root)") from exc
    return wrapped


@_os_errors
def install_service(service: SystemService, root: Path, *, start: bool = True,
                    run: Run = run_command) -> list[str]:
    """Make the user, the folders and the unit; on a real system, enable and start it.

    Args:
        service: What to install.
        root: ``/`` for this system, or a folder to lay the service out in (no user
            switching, no ``systemctl``).
        start: ``systemctl enable --now`` the unit (only where ``root`` is ``/``).
        run: Runs a system command (tests record them).

    Returns:
        What was done, one line each.

    Raises:
        ServiceInstallError: A step failed.
    """
    done: list[str] = []
    live = root == Path("/")
    sysusers = under(root, SYSUSERS_DIR / f"{service.name}.conf")
    sysusers.parent.mkdir(parents=True, exist_ok=True)
    sysusers.write_text(service.sysusers())
    under(root, Path("/etc")).mkdir(parents=True, exist_ok=True)
    run(["systemd-sysusers", *([] if live else [f"--root={root}"]), str(sysusers)])
    done.append(f"user {service.name} (from {sysusers})")
    owner = _ids(service.name) if live else None
    for folder in service.folders:
        path = under(root, folder.path)
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(folder.mode)
        if owner is not None:
            uid, gid = owner
            os.chown(path, uid if folder.writable else 0, gid)
        done.append(f"folder {path} ({folder.mode:04o})")
    unit = under(root, UNIT_DIR / service.unit_name)
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(service.unit)
    unit.chmod(0o644)
    done.append(f"unit {unit}")
    if live:
        run(["systemctl", "daemon-reload"])
    if start:
        done += start_service(service, root, run=run)
    return done


def start_service(service: SystemService, root: Path, *, run: Run = run_command) -> list[str]:
    """``systemctl enable --now`` the unit where ``root`` is this system's ``/``.

    Returns:
        What was done (nothing under another root).
    """
    if root != Path("/"):
        return []
    run(["systemctl", "enable", "--now", service.unit_name])
    return [f"started {service.unit_name}"]


def give_to_service(service: SystemService, paths: Sequence[Path], root: Path, *,
                    writable: bool) -> None:
    """Let the service's user read ``paths`` (group), or own them (``writable``: a
    secret only it may read). Nothing changes under another root."""
    if root != Path("/"):
        return
    uid, gid = _ids(service.name)
    for path in paths:
        os.chown(path, uid if writable else 0, gid)


@_os_errors
def uninstall_service(service: SystemService, root: Path, *, purge: bool = False,
                      run: Run = run_command) -> list[str]:
    """Stop and remove the unit; with ``purge``, its folders too. The user stays (a
    system user's id may still own files; Debian's policy keeps them too).

    Returns:
        What was done, one line each.
    """
    done: list[str] = []
    live = root == Path("/")
    unit = under(root, UNIT_DIR / service.unit_name)
    if live and unit.exists():
        run(["systemctl", "disable", "--now", service.unit_name])
        done.append(f"stopped {service.unit_name}")
    for path in (unit, under(root, SYSUSERS_DIR / f"{service.name}.conf")):
        if path.exists():
            path.unlink()
            done.append(f"removed {path}")
    if live:
        run(["systemctl", "daemon-reload"])
    if purge:
        for folder in service.folders:
            path = under(root, folder.path)
            if path.exists():
                shutil.rmtree(path)
                done.append(f"removed {path}")
    return done


def _ids(user: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise ServiceInstallError(f"systemd-sysusers did not make the user {user}") from exc
    return entry.pw_uid, entry.pw_gid
