"""Run the research-question notebooks headlessly with papermill (``./run_all.sh``).

Each notebook in ``notebooks/`` named ``NN_*.ipynb`` runs in order with the
``privimage`` kernel, ``--cwd notebooks`` and the parameter ``profile``; the
executed copy goes to ``results/<profile>/notebooks/`` (``$PRIVIMAGE_RESULTS/<profile>/``
when set, the folder `privimage.experiments.results_dir` gives the notebooks too). A failing notebook stops
the run with a non-zero exit and the failing cell's error.

A notebook executes into a hidden ``.NN_*.running.ipynb`` beside its final
name and replaces the previous executed copy only once it has finished, so an
interrupted run never leaves a truncated notebook under that name; a failed
run keeps its partial copy, with the traceback, as ``NN_*.failed.ipynb``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
KERNEL_NAME = "privimage"
# Folders the notebooks read from the environment. The kernels run in notebooks/,
# so a relative path would name another folder there than here.
PATH_VARIABLES = ("PRIVIMAGE_CACHE", "PRIVIMAGE_DATA", "PRIVIMAGE_RESULTS")


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


def failed_copy(output: Path) -> Path:
    """Where a failed run keeps its partial executed notebook: ``NN_name.failed.ipynb``."""
    return output.with_name(f"{output.stem}.failed.ipynb")


def run_notebook(notebook: Path, profile: str, results_dir: Path, *, progress: bool = False) -> float:
    """Execute one notebook with papermill; return its wall time in seconds.

    The executed copy lands at ``results_dir/notebooks/<name>`` only when the
    notebook has finished: papermill rewrites its output file as cells run, so
    it writes to a hidden file beside it, renamed on success. On an error the
    partial copy becomes `failed_copy`, and the previous executed copy stays.
    """
    import papermill

    output = results_dir / "notebooks" / notebook.name
    output.parent.mkdir(parents=True, exist_ok=True)
    running = output.with_name(f".{output.stem}.running.ipynb")
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(running),
            parameters={"profile": profile},
            kernel_name=KERNEL_NAME,
            cwd=str(NOTEBOOK_DIR),
            progress_bar=progress,
        )
    except BaseException:
        if running.exists():
            os.replace(running, failed_copy(output))
        raise
    os.replace(running, output)
    failed_copy(output).unlink(missing_ok=True)
    return time.perf_counter() - start


def absolute_path_variables() -> None:
    """Make the folders named in `PATH_VARIABLES` absolute, for the kernels that run in notebooks/."""
    for name in PATH_VARIABLES:
        value = os.environ.get(name)
        if value:
            os.environ[name] = str(Path(value).expanduser().absolute())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "paper"))
    parser.add_argument("--only", default="", help="comma-separated notebook numbers, e.g. 01,03")
    args = parser.parse_args(argv)

    only = {part.strip().zfill(2) for part in args.only.split(",") if part.strip()} or None
    notebooks = discover_notebooks(only)
    absolute_path_variables()
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
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import DeadKernelError

    timings = []
    for notebook in notebooks:
        print(f"[run_all] {notebook.name} (profile {args.profile}) ...", flush=True)
        partial = failed_copy(results_dir / "notebooks" / notebook.name)
        try:
            seconds = run_notebook(notebook, args.profile, results_dir, progress=True)
        except papermill.PapermillExecutionError as exc:
            print(f"error: {notebook.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}", file=sys.stderr)
            print(f"       executed copy with the traceback: {partial}", file=sys.stderr)
            return 1
        except DeadKernelError:
            print(f"error: {notebook.name}: the kernel died (out of memory?); partial copy: {partial}",
                  file=sys.stderr)
            return 1
        except NoSuchKernel:
            print(f"error: no Jupyter kernel named {KERNEL_NAME!r}; run ./run_all.sh, which installs it",
                  file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"error: interrupted during {notebook.name}; the stages it finished are cached, "
                  "and the next run goes on from them", file=sys.stderr)
            return 130
        timings.append((notebook.name, seconds))
        print(f"[run_all] {notebook.name} done in {seconds / 60:.1f} min", flush=True)

    total = sum(s for _, s in timings)
    print(f"[run_all] all {len(timings)} notebooks done in {total / 60:.1f} min; outputs in {results_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
