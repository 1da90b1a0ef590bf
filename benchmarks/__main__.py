"""Every benchmark in one process: ``python -m benchmarks --out results/benchmarks``.

Writes ``dp_step.json``, ``dp_step.md`` (`benchmarks.dp_step`),
``throughput.json`` (`benchmarks.throughput`) and ``busy_machine.json``,
``busy_machine.md`` (`benchmarks.busy_machine`) with the same device and threads.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import busy_machine, dp_step, throughput
from benchmarks.cli import run_command


def main(argv: list[str] | None = None) -> int:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        dp_step.add_arguments(parser)
        throughput.add_arguments(parser)
        busy_machine.add_arguments(parser)
        parser.add_argument("--skip-throughput", action="store_true", help="no throughput benchmark")
        parser.add_argument("--skip-busy", action="store_true", help="no busy-machine benchmark")

    def run(args: argparse.Namespace, device) -> str:
        dp_step.dp_step_from_args(args, device=device)
        written = [f"dp_step{args.suffix}.json", f"dp_step{args.suffix}.md"]
        if not args.skip_throughput:
            throughput.throughput_from_args(args, device=device, suffix=args.suffix)
            written.append(f"throughput{args.suffix}.json")
        if not args.skip_busy:
            busy_machine.busy_machine_from_args(args, device=device, suffix=args.suffix)
            written += [f"busy_machine{args.suffix}.json", f"busy_machine{args.suffix}.md"]
        return f"benchmarks: wrote {', '.join(written)} in {args.out}"

    return run_command(argv, prog="python -m benchmarks", description=__doc__.splitlines()[0],
                       add_arguments=add_arguments, run=run)


if __name__ == "__main__":
    sys.exit(main())
