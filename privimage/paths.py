"""Where the notebooks' inputs and outputs live, whatever their working directory.

Results go to ``$PRIVIMAGE_RESULTS/<profile>``, else ``<repo>/results/<profile>``
(``tables/`` and ``figures/`` inside). Real datasets: `privimage.data.registry.default_data_root`.
"""

from __future__ import annotations

import os
from pathlib import Path

RESULTS_ENV = "PRIVIMAGE_RESULTS"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def results_dir(profile: str) -> Path:
    """The results folder of a profile: ``$PRIVIMAGE_RESULTS/<profile>``, else ``<repo>/results/<profile>``.

    Args:
        profile: a profile name, or a YAML path (its file stem names the folder).

    Returns:
        The folder (created, with ``tables/`` and ``figures/`` inside).
    """
    name = Path(profile).stem if Path(profile).suffix in (".yaml", ".yml") else profile
    root = Path(os.environ[RESULTS_ENV]) if os.environ.get(RESULTS_ENV) else _REPO_ROOT / "results"
    folder = root / name
    for sub in ("tables", "figures"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder


def tables_dir(profile: str) -> Path:
    """``results_dir(profile)/tables``."""
    return results_dir(profile) / "tables"


def figures_dir(profile: str) -> Path:
    """``results_dir(profile)/figures``."""
    return results_dir(profile) / "figures"
