"""Reading a run or release folder, and refusing to write one inside another.

``privimage run`` and ``privimage select`` call `check_release_location` before
any work; `read_json_mapping` reads a folder's JSON records with one-line errors
(a resumed run, and ``privimage audit`` through `read_json`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from privimage.cache import check_output_folder
from privimage.errors import PrivImageError

# What ``privimage select`` releases (semantics/stage.py): a noisy query of the sensitive data, with its own ledger.
RELEASE_FILES = ("selection.json", "noisy_histogram.npz")
# Files that make a folder a run folder of ``privimage run``.
RUN_MARKERS = ("run.json", "ledger.json")


def read_json(path: Path, what: str) -> Any:
    """A JSON file of a run folder; an unreadable one is a `PrivImageError` naming it.

    Args:
        path: the JSON file.
        what: why a missing file matters, appended to its "not found" message.

    Returns:
        The parsed JSON value.
    """
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PrivImageError(f"{path} not found: {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PrivImageError(f"{path} is not readable JSON ({exc.__class__.__name__})") from None


def read_json_mapping(path: Path, *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object of a run folder holding ``required`` keys; anything else is a one-line `PrivImageError`.

    Args:
        path: the JSON file (it must exist).
        required: keys it must hold.

    Returns:
        The parsed object.
    """
    data = read_json(path, "")
    if not isinstance(data, dict):
        raise PrivImageError(f"{path} holds a JSON {type(data).__name__}, not an object: the folder is damaged")
    missing = [key for key in required if key not in data]
    if missing:
        raise PrivImageError(f"{path} lacks {', '.join(repr(key) for key in missing)}: the folder is damaged")
    return data


def check_release_location(*, out_dir: Path, command: str) -> None:
    """Refuse an output folder inside or on top of another release or run, or one that cannot be written.

    A release (the noisy query of ``privimage select``) and a run each carry their
    own privacy record; a folder holding both would show one ledger beside a
    release it does not charge (DESIGN.md, Privacy: one ledger per run). Called
    before any work and before the sensitive data is read.

    Args:
        out_dir: the folder ``command`` would write into.
        command: ``"run"`` or ``"select"``, for the message.

    Raises:
        PrivImageError: the folder or a folder above it holds a release or a run
            that is not this command's own, or the folder cannot be created.
    """

    out_dir = check_output_folder(out_dir)
    # The folder itself may hold its own earlier output (a resumed run; select refuses that itself).
    foreign = RELEASE_FILES if command == "run" else RUN_MARKERS
    held = [name for name in foreign if (out_dir / name).exists()]
    if held:
        raise PrivImageError(f"{out_dir} holds {held[0]} of another "
                             f"{'release' if command == 'run' else 'run'}: choose another --out for this {command}")
    for folder in out_dir.resolve().parents:
        held = [name for name in RELEASE_FILES + RUN_MARKERS if (folder / name).is_file()]
        if held:
            raise PrivImageError(f"{out_dir} lies inside {folder}, which holds {held[0]} of another release or run: "
                                 f"choose a --out outside it")
