"""Every benchmark in one process: ``python -m benchmarks --out results/benchmarks``.

Writes ``dp_step.json``, ``dp_step.md`` (`benchmarks.dp_step`) and
``throughput.json`` (`benchmarks.throughput`) with the same device and threads.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import dp_step, throughput
from privimage.errors import PrivImageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    dp_step.add_common_arguments(parser)
    dp_step.add_arguments(parser)
    throughput.add_arguments(parser)
    parser.add_argument("--skip-throughput", action="store_true", help="only the DP-step benchmark")
    args = parser.parse_args(argv)
    try:
        device = dp_step.apply_common_arguments(args)
        dp_step.dp_step_from_args(args, device=device)
        written = [f"dp_step{args.suffix}.json", f"dp_step{args.suffix}.md"]
        if not args.skip_throughput:
            throughput.throughput_from_args(args, device=device, suffix=args.suffix)
            written.append(f"throughput{args.suffix}.json")
    except PrivImageError as exc:
        # Bad options end in one line and status 2, as in the privimage CLI.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"benchmarks: wrote {', '.join(written)} in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
