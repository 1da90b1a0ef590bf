"""Run the research-question notebooks headlessly with papermill (``./run_all.sh``).

Each notebook in ``notebooks/`` named ``NN_*.ipynb`` runs in order with the
``privimage`` kernel, ``--cwd notebooks`` and the parameter ``profile``; the
executed copy goes to ``results/<profile>/notebooks/`` (``$PRIVIMAGE_RESULTS/<profile>/``
when set, the folder `privimage.experiments.results_dir` gives the notebooks too). A failing notebook stops
the run with a non-zero exit and the failing cell's error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
KERNEL_NAME = "privimage"


def discover_notebooks(only: set[str] | None = None) -> list[Path]:
    """The numbered notebooks, in order, optionally restricted to some numbers."""
    notebooks = sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        unknown = only - {p.name[:2] for p in notebooks}
        if unknown:
            raise SystemExit(f"error: --only names notebooks that do not exist: {', '.join(sorted(unknown))}")
        notebooks = [p for p in notebooks if p.name[:2] in only]
    return notebooks


def missing_requirements(profile: str) -> list[str]:
    """What this machine lacks to run ``profile`` (empty when nothing is missing).

    The embedded profiles need nothing beyond the installed packages. The paper
    profile trains the paper's models on real datasets: it needs a CUDA GPU,
    every dataset its config and grids name, and (for its FID) Inception weights.
    """
    if profile != "paper":
        return []
    import torch

    from privimage.config import load_config
    from privimage.data import dataset_info
    from privimage.evaluation.fid import find_inception_weights
    from privimage.experiments import resolve_data_root

    config = load_config(profile)
    data_root = resolve_data_root()
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    datasets = {config.data.sensitive: ("train", "test"), config.data.public: ("train", "val"),
                config.experiment.overparameterization_dataset: ("train", "test")}
    for name, splits in datasets.items():
        for split in splits:
            info = dataset_info(name, split, data_root=data_root, config=config.data)
            if not info["available"]:
                missing.append(f"dataset {name}/{split} at {info['expected_path']} "
                               f"(`privimage data list` says how to get it)")
    if config.evaluation.fid_backbone != "offline" and find_inception_weights(config=config.evaluation) is None:
        missing.append("pytorch-fid's Inception weights (`privimage evaluate --download-inception`, "
                       "or set $PRIVIMAGE_INCEPTION_WEIGHTS)")
    return missing


def run_notebook(notebook: Path, profile: str, results_dir: Path) -> float:
    """Execute one notebook with papermill; return its wall time in seconds."""
    import papermill

    output = results_dir / "notebooks" / notebook.name
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters={"profile": profile},
        kernel_name=KERNEL_NAME,
        cwd=str(NOTEBOOK_DIR),
        progress_bar=False,
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "paper"))
    parser.add_argument("--only", default="", help="comma-separated notebook numbers, e.g. 01,03")
    args = parser.parse_args(argv)

    only = {part.strip().zfill(2) for part in args.only.split(",") if part.strip()} or None
    notebooks = discover_notebooks(only)
    # Refuse at once, not hours into a run, when the profile cannot run here.
    missing = missing_requirements(args.profile)
    if missing:
        print(f"error: the {args.profile} profile cannot run on this machine; missing: " + "; ".join(missing),
              file=sys.stderr)
        return 2
    from privimage.experiments import results_dir as profile_results_dir

    results_dir = profile_results_dir(args.profile)
    if not notebooks:
        print("No notebooks found in notebooks/; nothing to run.")
        return 0

    import papermill

    timings = []
    for notebook in notebooks:
        print(f"[run_all] {notebook.name} (profile {args.profile}) ...", flush=True)
        try:
            seconds = run_notebook(notebook, args.profile, results_dir)
        except papermill.PapermillExecutionError as exc:
            print(f"error: {notebook.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}", file=sys.stderr)
            print(f"       executed copy with the traceback: {results_dir / 'notebooks' / notebook.name}", file=sys.stderr)
            return 1
        timings.append((notebook.name, seconds))
        print(f"[run_all] {notebook.name} done in {seconds / 60:.1f} min", flush=True)

    total = sum(s for _, s in timings)
    print(f"[run_all] all {len(timings)} notebooks done in {total / 60:.1f} min; outputs in {results_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
