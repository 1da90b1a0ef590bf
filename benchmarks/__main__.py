"""Every benchmark in one process: ``python -m benchmarks --out results/benchmarks``.

Writes ``dp_step.json``, ``dp_step.md`` (`benchmarks.dp_step`) and
``throughput.json`` (`benchmarks.throughput`) with the same device and threads.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import dp_step, throughput
from benchmarks.cli import run_command


def main(argv: list[str] | None = None) -> int:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        dp_step.add_arguments(parser)
        throughput.add_arguments(parser)
        parser.add_argument("--skip-throughput", action="store_true", help="only the DP-step benchmark")

    def run(args: argparse.Namespace, device) -> str:
        dp_step.dp_step_from_args(args, device=device)
        written = [f"dp_step{args.suffix}.json", f"dp_step{args.suffix}.md"]
        if not args.skip_throughput:
            throughput.throughput_from_args(args, device=device, suffix=args.suffix)
            written.append(f"throughput{args.suffix}.json")
        return f"benchmarks: wrote {', '.join(written)} in {args.out}"

    return run_command(argv, prog="python -m benchmarks", description=__doc__.splitlines()[0],
                       add_arguments=add_arguments, run=run)


if __name__ == "__main__":
    sys.exit(main())
