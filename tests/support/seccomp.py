"""A systemd unit's syscall filter, applied to a process without systemd.

systemd is not PID 1 where the tests run, so ``systemd-run`` cannot start a unit. What
the unit's ``SystemCallFilter=`` does is rebuilt here the way systemd builds it: the
first line is an allow list (systemd adds ``@default`` to it); a ``~`` line takes its
calls away; a later plain line adds its calls back. Each ``@set`` is expanded by
``systemd-analyze syscall-filter`` (this machine's systemd, nested sets included).
Anything else kills the process with SIGSYS, as the unit's filter does without a
``SystemCallErrorNumber=``.

:func:`filtered_command` prefixes a command with ``python -m tests.support.seccomp
LIST``, which loads that filter into itself with libseccomp (through ``pyseccomp``) and
then ``exec``s the command, so the command and every thread it starts run under it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
from pathlib import Path


@functools.cache
def expand(name: str) -> frozenset[str]:
    """The calls of ``name``: itself, or every call of a ``@set`` (nested sets too)."""
    if not name.startswith("@"):
        return frozenset({name})
    text = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                          text=True, check=True).stdout
    calls: set[str] = set()
    for line in text.splitlines()[1:]:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            calls |= expand(entry)
    return frozenset(calls)


def unit_allowed_syscalls(unit: str) -> frozenset[str]:
    """The calls a unit's ``SystemCallFilter=`` lines allow (an allow list first)."""
    lines = [line.partition("=")[2].strip() for line in unit.splitlines()
             if line.startswith("SystemCallFilter=")]
    if not lines or lines[0].startswith("~"):
        raise ValueError("the unit's first SystemCallFilter= is not an allow list")
    allowed: set[str] = set(expand("@default"))
    for line in lines:
        deny = line.startswith("~")
        names = {call for item in line.removeprefix("~").split() for call in expand(item)}
        allowed = allowed - names if deny else allowed | names
    return frozenset(allowed)


def filtered_command(allowed: frozenset[str], folder: Path, command: list[str]) -> list[str]:
    """``command`` run under a filter that allows ``allowed`` and kills on anything else."""
    listing = folder / "allowed-syscalls.txt"
    listing.write_text("\n".join(sorted(allowed)) + "\n")
    return [sys.executable, "-m", "tests.support.seccomp", str(listing), *command]


def _exec_filtered(listing: Path, command: list[str]) -> None:
    import pyseccomp

    syscall_filter = pyseccomp.SyscallFilter(defaction=pyseccomp.KILL_PROCESS)
    for name in listing.read_text().split():
        # A call this architecture or libseccomp does not know: nothing to allow.
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            syscall_filter.add_rule(pyseccomp.ALLOW, name)
    syscall_filter.load()
    os.execv(command[0], command)


if __name__ == "__main__":
    _exec_filtered(Path(sys.argv[1]), sys.argv[2:])
