"""Start-up thread defaults: passive OpenMP waiting and one thread per core, unless the user says otherwise."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from privimage.threads import configure_cpu_threads, default_threads

REPO = Path(__file__).resolve().parents[1]


def test_unset_variables_get_the_defaults_and_the_users_are_kept():
    environ = {"OMP_NUM_THREADS": "3"}
    decided = configure_cpu_threads(environ)
    assert environ == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    assert decided["source_OMP_NUM_THREADS"] == "user" and decided["source_OMP_WAIT_POLICY"] == "default"
    # An empty value is no setting (libgomp would reject it).
    environ = {"OMP_WAIT_POLICY": " ", "OMP_NUM_THREADS": ""}
    configure_cpu_threads(environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(default_threads())}


def test_default_threads_count_cores_this_process_may_use():
    assert 1 <= default_threads() <= len(os.sched_getaffinity(0))


def openmp_settings_seen_by_torch(**environment):
    """What libgomp reports it started with, in a fresh process that imports privimage, then torch."""
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(environment, OMP_DISPLAY_ENV="TRUE", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", "import privimage, torch; print(torch.get_num_threads())"],
                          env=env, capture_output=True, text=True, check=True)
    shown = dict(line.strip().replace("'", "").split(" = ", 1) for line in done.stderr.splitlines()
                 if line.strip().startswith("OMP_") and " = " in line)
    return shown, int(done.stdout.split()[-1])


def test_torch_starts_libgomp_with_the_defaults():
    shown, threads = openmp_settings_seen_by_torch()
    assert shown["OMP_WAIT_POLICY"] == "PASSIVE"
    assert shown["OMP_NUM_THREADS"] == str(default_threads()) and threads == default_threads()


@pytest.mark.parametrize("policy, threads", [("ACTIVE", "1"), ("PASSIVE", "1")])
def test_the_users_environment_overrides_the_defaults(policy, threads):
    shown, torch_threads = openmp_settings_seen_by_torch(OMP_WAIT_POLICY=policy, OMP_NUM_THREADS=threads)
    assert shown["OMP_WAIT_POLICY"] == policy and torch_threads == int(threads)
