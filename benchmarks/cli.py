"""The command-line frame every benchmark command shares: options, errors, exit status."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

from privimage.errors import ConfigError, PrivImageError


def run_command(
    argv: list[str] | None,
    *,
    prog: str | None,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace, torch.device], str],
) -> int:
    """Parse the shared and the command's options, run it, and report as the privimage CLI does.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        prog: the program name shown in ``--help`` (default: argparse's).
        description: the one-line description shown in ``--help``.
        add_arguments: adds the command's own options.
        run: does the work given the parsed options and the device; returns what it wrote.

    Returns:
        0, or 2 after one ``error:`` line when an option is bad.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_common_arguments(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        written = run(args, apply_common_arguments(args))
    except PrivImageError as exc:
        # Bad options end in one line and status 2, as in the privimage CLI.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(written, file=sys.stderr)
    return 0


def write_report(out: Path, name: str, document: dict, markdown: str) -> str:
    """Write ``<out>/<name>.json`` and ``<out>/<name>.md`` atomically; returns the line a command prints."""
    from privimage.cache import atomic_write_bytes, atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{name}.json", document)
    atomic_write_bytes(out / f"{name}.md", markdown.encode())
    return f"wrote {name}.json and .md in {out}"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every benchmark command shares."""
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"), help="output folder")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: the start-up decision of privimage.threads; recorded)")
    parser.add_argument("--suffix", default="", help="appended to the output file names (e.g. _gpu)")


def apply_common_arguments(args: argparse.Namespace) -> torch.device:
    """Set the thread count and check the device; returns the device."""
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but torch sees no CUDA device")
    return device
