"""The ``privimage`` command line.

Each command group lives in its own module of this package and exposes
``register(subparsers)``; this module only dispatches. Conventions every command
follows:

- ``--json`` prints exactly one JSON object on the last line of standard output;
- ``--data-root`` defaults to ``$PRIVIMAGE_DATA``, else ``./data``;
- a `PrivImageError`, or a command line argparse cannot parse, becomes
  ``error: <message>`` on standard error and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from privimage.errors import PrivImageError

# Command modules, in the order ``privimage --help`` lists them. A module that
# does not exist yet is skipped, so the CLI grows with the library.
COMMAND_MODULES = (
    "privimage.cli.data",
    "privimage.cli.privacy",
    "privimage.cli.semantics",
    "privimage.cli.methods",
    "privimage.cli.evaluate",
    "privimage.cli.audit",
)


class UsageError(PrivImageError):
    """A command line that does not parse (unknown option, missing or malformed value)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one ``error:`` line (naming --help) instead of usage text and an exit."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="privimage",
        description="PrivImage companion: DP image synthesis with semantics-guided pre-training.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        result = args.func(args)
    except PrivImageError as exc:
        message = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Not the input's fault but the file system's; still one line, not a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
