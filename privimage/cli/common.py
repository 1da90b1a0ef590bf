"""Options and output helpers shared by every command."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from privimage.data.registry import default_data_root


def finish_command(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int], *,
                   profile: bool = True, data_root: bool = True) -> None:
    """Add the options commands share (``--profile``, ``--data-root``, ``--json``) and what runs it."""
    if profile:
        parser.add_argument("--profile", default="quick", help="smoke, quick, paper or a YAML path (default: quick)")
    if data_root:
        parser.add_argument(
            "--data-root", type=Path, default=None,
            help="folder holding real datasets and caches (default: $PRIVIMAGE_DATA, else ./data)",
        )
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    parser.set_defaults(func=func)


def data_root_option(args: argparse.Namespace) -> Path:
    """The ``--data-root`` a command was given, else the default (`privimage.data.registry.default_data_root`)."""
    return args.data_root if getattr(args, "data_root", None) is not None else default_data_root()


def emit(result: dict[str, Any], as_json: bool, human: str | None = None) -> None:
    """Print a command's result: one JSON line, or a human-readable text."""
    if as_json:
        print(json.dumps(result, default=_jsonable))
    else:
        print(human if human is not None else json.dumps(result, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
