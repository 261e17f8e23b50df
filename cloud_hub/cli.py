"""``cloud-hub``: the cloud hub's command line.

``cloud-hub doctor`` shows which ONNX Runtime execution providers the hub's heavy models
would run on here (TensorRT, CUDA, then CPU on a GPU server).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from hardware import plan_for_runtime, probe_hardware


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="cloud-hub", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    doctor = commands.add_parser("doctor", help="show the hub's hardware and ONNX backend plan")
    doctor.add_argument("--json", action="store_true", help="one JSON object on stdout")
    doctor.add_argument("--root", type=Path, default=Path("/"), help="filesystem root to probe")
    args = parser.parse_args(argv)

    profile = probe_hardware(args.root)
    plan = plan_for_runtime(profile, "onnx", label="hub models (ONNX)")
    if args.json:
        print(json.dumps({"hardware": profile.to_dict(), "plan": plan.to_dict()}, indent=2))
        return 0
    gpus = ", ".join(profile.nvidia_gpus) or "none"
    print(f"{profile.architecture}, {profile.cpu_count} cores, NVIDIA GPUs: {gpus}")
    print("\n".join(plan.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
