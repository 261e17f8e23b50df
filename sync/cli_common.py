"""What both command lines (``edge-agent``, ``cloud-hub``) share: the options every
subcommand takes, how they log, and the version line.

Logs go to stderr, as ``text`` (``<prog>: LEVEL: message``, for people) or ``json``: one
object a line with ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``thread``,
``message``, and ``exception`` when there is one. The agent and the hub write the same
shape, so one log pipeline reads both.

Options shared by every subcommand are accepted before and after it
(``edge-agent models pull X --store D`` as well as ``edge-agent --store D models pull X``):
:func:`share_options` adds them to every subparser with a suppressed default, so a value
given after the subcommand wins and one given before it is kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Literal

from sync.progress import quiet_progress

DISTRIBUTION = "edge-cloud-runtime"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
LogFormat = Literal["text", "json"]


def release() -> str:
    """This installation's version (the distribution's), or ``unknown`` when the code
    runs from a tree that was never installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def version_line(prog: str) -> str:
    """What ``--version`` prints: the program, its version and the Python it runs on."""
    return f"{prog} {release()} (Python {platform.python_version()}, {platform.machine()})"


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def add_log_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """``-v``, ``--log-level`` and ``--log-format`` (``suppress``: for a subparser)."""
    default: Callable[[object], object] = (lambda _: argparse.SUPPRESS) if suppress else (
        lambda value: value)
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False),
                        help="log what happens (--log-level info)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=default(None),
                        help="least important messages to log (default: warning; info "
                        "with -v)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=default("text"),
                        help="text for people, json for log shippers (one object a line)")


def share_options(parser: argparse.ArgumentParser,
                  add: Callable[[argparse.ArgumentParser], None]) -> None:
    """Call ``add`` on every subparser below ``parser``, at every depth."""
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for subparser in {id(p): p for p in action.choices.values()}.values():
                add(subparser)
                share_options(subparser, add)


def configure_logging(prog: str, args: argparse.Namespace) -> None:
    """Log to stderr at the level and in the format ``args`` ask for."""
    level_name: str = args.log_level or ("info" if args.verbose else "warning")
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        quiet_progress()  # stderr is a log of JSON lines: no bars among them
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"{prog}: %(levelname)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level_name.upper()), handlers=[handler])
