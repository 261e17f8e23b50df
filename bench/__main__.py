"""``python -m bench NAME``: run one benchmark; its last line is one JSON object."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bench import (
    batching,
    cascade,
    codec,
    fleet,
    fleet_return,
    footprint,
    gate,
    overhead,
    provision,
    publish,
    scaleout,
    update,
)

BENCHMARKS: dict[str, Callable[[list[str]], int]] = {
    "batching": batching.main,
    "cascade": cascade.main,
    "codec": codec.main,
    "fleet": fleet.main,
    "fleet-return": fleet_return.main,
    "footprint": footprint.main,
    "gate": gate.main,
    "overhead": overhead.main,
    "provision": provision.main,
    "publish": publish.main,
    "scaleout": scaleout.main,
    "update": update.main,
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the named benchmark, with every argument after its name (``--help``
    included: ``python -m bench fleet --help`` is the fleet benchmark's own help)."""
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    parser.add_argument("options", nargs=argparse.REMAINDER,
                        help="the benchmark's own options (see: python -m bench NAME --help)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return BENCHMARKS[args.name](args.options)


if __name__ == "__main__":
    sys.exit(main())
