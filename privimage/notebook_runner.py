"""Run the research-question notebooks headlessly with papermill (``./run_all.sh``).

Each notebook in ``notebooks/`` named ``NN_*.ipynb`` runs in order with the
``privimage`` kernel, ``--cwd notebooks`` and the parameter ``profile``; the
executed copy goes to ``results/<profile>/notebooks/`` (``$PRIVIMAGE_RESULTS/<profile>/``
when set, the folder `privimage.paths.results_dir` gives the notebooks too). A failing notebook stops
the run with a non-zero exit and the failing cell's error.

A notebook executes into a hidden ``.NN_*.running.ipynb`` beside its final
name and replaces the previous executed copy only once it has finished, so an
interrupted run never leaves a truncated notebook under that name; a failed
run keeps its partial copy, with the traceback, as ``NN_*.failed.ipynb``.

Once every notebook has run, ``tables/tab_claims.csv`` and ``.md`` check the
paper's claims against the tables (`privimage.claims`).

Beside them, ``run_info.json`` says what produced them (`RunInfo`): the commit
and whether the tree was clean, start and end time, each notebook's wall time,
the peak resident memory, torch's threads, the CPUs and the load average. It
is rewritten after every notebook, so an interrupted run leaves its record too.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import papermill
import torch
from jupyter_client.kernelspec import NoSuchKernel
from nbclient.exceptions import DeadKernelError

from privimage.cache import atomic_write_json
from privimage.claims import write_claims
from privimage.config import load_config
from privimage.data import dataset_info
from privimage.data.registry import default_data_root
from privimage.evaluation.fid import find_inception_weights
from privimage.paths import results_dir as profile_results_dir

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


    config = load_config(profile)
    data_root = default_data_root()
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


def git_state(repo: Path = REPO_ROOT) -> dict:
    """The commit checked out and whether the tree was clean (None for both outside a git checkout).

    Args:
        repo: the repository folder.

    Returns:
        ``commit``, ``tree_clean`` and ``changed_paths`` (the first 20 that ``git status`` lists).
    """
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit, status = git("rev-parse", "HEAD"), git("status", "--porcelain")
    changed = [line[3:] for line in (status or "").splitlines()]
    return {"commit": commit.strip() if commit else None,
            "tree_clean": None if status is None else not changed, "changed_paths": changed[:20]}


def peak_rss_mb() -> float:
    """The largest resident memory of this process or of any finished child (the notebook kernels), in MB."""
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    unit = 1 if sys.platform == "darwin" else 1024
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return peak * unit / 1e6


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class RunInfo:
    """``results/<profile>/run_info.json``: what one ``./run_all.sh`` ran, on what, and at what cost.

    Args:
        path: the file to (re)write.
        profile: the profile run.
        only: the notebook numbers asked for (None: all).
    """

    def __init__(self, *, path: Path, profile: str, only: set[str] | None) -> None:
        self.path = path
        self._start = time.perf_counter()
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        self.record = {
            "profile": profile, "only": sorted(only) if only else None, **git_state(),
            "start": _now(), "end": None, "wall_seconds": None, "status": "running", "notebooks": [],
            # The kernels inherit this environment, so they run with the same thread count.
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "cpu_count": os.cpu_count(), "cpus_usable": len(cpus) if cpus is not None else None,
            "load_average_start": list(os.getloadavg()), "load_average_end": None, "peak_rss_mb": None,
        }

    def notebook_done(self, name: str, seconds: float) -> None:
        """Add a finished notebook; ``peak_rss_mb_so_far`` rose during it if it exceeds the previous one's."""
        self.record["notebooks"].append({"name": name, "wall_seconds": round(seconds, 1),
                                         "peak_rss_mb_so_far": round(peak_rss_mb(), 1)})
        self.write()

    def write(self, status: str | None = None) -> None:
        """Rewrite the file with the time, memory and load so far; ``status`` ends the run."""

        if status is not None:
            self.record.update(status=status, end=_now())
        self.record.update(wall_seconds=round(time.perf_counter() - self._start, 1), peak_rss_mb=round(peak_rss_mb(), 1),
                           load_average_end=list(os.getloadavg()))
        atomic_write_json(self.path, self.record)


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
    # The kernels run in notebooks/: without $PRIVIMAGE_DATA they would look for notebooks/data.
    os.environ.setdefault("PRIVIMAGE_DATA", str(REPO_ROOT / "data"))
    absolute_path_variables()
    # Refuse at once, not hours into a run, when the profile cannot run here.
    missing = missing_requirements(args.profile)
    if missing:
        print(f"error: the {args.profile} profile cannot run on this machine; missing: " + "; ".join(missing),
              file=sys.stderr)
        return 2

    results_dir = profile_results_dir(args.profile)
    if not notebooks:
        print("No notebooks found in notebooks/; nothing to run.")
        return 0


    info = RunInfo(path=results_dir / "run_info.json", profile=args.profile, only=only)
    info.write()
    timings = []
    for notebook in notebooks:
        print(f"[run_all] {notebook.name} (profile {args.profile}) ...", flush=True)
        partial = failed_copy(results_dir / "notebooks" / notebook.name)
        try:
            seconds = run_notebook(notebook, args.profile, results_dir, progress=True)
        except papermill.PapermillExecutionError as exc:
            info.write(status=f"failed in {notebook.name}")
            print(f"error: {notebook.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}", file=sys.stderr)
            print(f"       executed copy with the traceback: {partial}", file=sys.stderr)
            return 1
        except DeadKernelError:
            info.write(status=f"kernel died in {notebook.name}")
            print(f"error: {notebook.name}: the kernel died (out of memory?); partial copy: {partial}",
                  file=sys.stderr)
            return 1
        except NoSuchKernel:
            info.write(status="no kernel")
            print(f"error: no Jupyter kernel named {KERNEL_NAME!r}; run ./run_all.sh, which installs it",
                  file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            info.write(status=f"interrupted in {notebook.name}")
            print(f"error: interrupted during {notebook.name}; the stages it finished are cached, "
                  "and the next run goes on from them", file=sys.stderr)
            return 130
        timings.append((notebook.name, seconds))
        info.notebook_done(notebook.name, seconds)
        print(f"[run_all] {notebook.name} done in {seconds / 60:.1f} min", flush=True)

    # The last step: the paper's claims, computed from the tables the notebooks just wrote.

    claims = write_claims(results_dir / "tables")
    print("[run_all] tab_claims: " + ", ".join(f"{v} {n}" for v, n in claims["verdict"].value_counts().items()),
          flush=True)
    info.write(status="finished")
    total = sum(s for _, s in timings)
    print(f"[run_all] all {len(timings)} notebooks done in {total / 60:.1f} min; outputs in {results_dir}/ "
          f"(run_info.json: commit, times, peak memory)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
