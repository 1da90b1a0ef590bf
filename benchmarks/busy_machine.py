"""How much slower each stage runs beside one CPU-bound process than on an idle machine.

``python -m benchmarks.busy_machine --out results/benchmarks`` writes
``busy_machine.json`` and ``busy_machine.md``; ``python -m benchmarks`` runs
it after the others. Three stages, each the library's own code path at the
quick profile's sizes: a DP fine-tuning step (`privimage.training.dpsgd.dp_sgd_step`),
a pre-training step (the non-private step on the same rows) and DDIM sampling
(`benchmarks.throughput`'s call). Each round times one call with the machine
as it is and one beside a ``while True: pass`` child, which is paused
(SIGSTOP) between the busy calls, so the two halves of a round see the same
background load from everyone else; the medians over rounds give the slowdown.

The process runs with the defaults `privimage.threads` chose at start-up
(or the user's own ``OMP_NUM_THREADS`` / ``OMP_WAIT_POLICY``).
``--compare-environments`` measures other settings, each in a fresh process,
since libgomp reads its wait policy only when it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from benchmarks.cli import write_report
from benchmarks.dp_benchmark import environment
from privimage.config import load_config
from privimage.diffusion import ddim_sample, draw_diffusion_noise
from privimage.errors import ConfigError
from privimage.evaluation.step_cost import make_steps, synchronize, unet_config
from privimage.models import build_unet

BUSY_FILE = "busy_machine"
# Issue #22: beside one CPU-bound process, each stage at most this many times slower than idle.
SLOWDOWN_TARGET = 3.0
STAGES = ("dp_step", "pretrain_step", "ddim_sampling")


def stage_calls(*, model: str, image_channels: int, batch_size: int, noise_multiplicity: int,
                sampling_images: int, device: torch.device) -> dict[str, Callable[[], None]]:
    """One call of each stage, on a freshly initialised UNet (the weights do not change the cost).

    Args:
        model: ``quick`` or a UNet preset.
        image_channels: 1 (MNIST) or 3 (CIFAR-10).
        batch_size: B images of the DP and pre-training steps.
        noise_multiplicity: K draws per image of the DP step.
        sampling_images: images per DDIM call (the quick profile's steps and guidance).
        device: where to run.

    Returns:
        stage name -> a callable running it once.
    """
    torch.manual_seed(0)
    network = build_unet(unet_config(model), image_channels=image_channels, image_size=32, num_classes=10).to(device)
    generator = torch.Generator(device=device).manual_seed(1)
    images = torch.rand((batch_size, image_channels, 32, 32), generator=generator, device=device) * 2 - 1
    labels = torch.randint(0, 10, (batch_size,), generator=generator, device=device)
    noise, times, conditioning = draw_diffusion_noise(images, labels, noise_multiplicity=noise_multiplicity,
                                                      label_dropout=0.1, num_classes=10, generator=generator)
    steps = make_steps(model=network, images=images, noise=noise, times=times, conditioning=conditioning,
                       methods=["dp_sgd", "non_private"], device=device,
                       multiplicity_chunk=load_config("quick").finetune.multiplicity_chunk or None)
    sampling = load_config("quick").sampling
    sample_labels = torch.arange(sampling_images, device=device) % 10

    def sample() -> None:
        ddim_sample(network, labels=sample_labels, image_shape=(image_channels, 32, 32), num_classes=10,
                    steps=sampling.ddim_steps, guidance_scale=sampling.guidance_scale)

    return {"dp_step": steps["dp_sgd"], "pretrain_step": steps["non_private"], "ddim_sampling": sample}


def idle_and_busy_seconds(call: Callable[[], None], *, rounds: int, device: torch.device) -> dict:
    """Seconds of ``call`` alone and beside a CPU-bound child, interleaved round by round.

    Args:
        call: one stage call.
        rounds: timed (idle, busy) pairs after one warm-up call.
        device: where ``call`` runs (CUDA work is synchronised before each reading).

    Returns:
        ``{"idle_seconds", "busy_seconds", "idle_median_seconds", "busy_median_seconds", "slowdown"}``.
    """
    def timed() -> float:
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        return time.perf_counter() - start

    call()
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle, busy = [], []
    try:
        for _ in range(rounds):
            # Paused, the child takes no CPU: the same process tree, with and without the busy job.
            child.send_signal(signal.SIGSTOP)
            idle.append(timed())
            child.send_signal(signal.SIGCONT)
            time.sleep(0.2)
            busy.append(timed())
    finally:
        child.kill()
        child.wait()
    idle_median, busy_median = statistics.median(idle), statistics.median(busy)
    return {"idle_seconds": idle, "busy_seconds": busy, "idle_median_seconds": idle_median,
            "busy_median_seconds": busy_median, "slowdown": busy_median / idle_median}


def measure(*, model: str, image_channels: int, batch_size: int, noise_multiplicity: int, sampling_images: int,
            rounds: int, device: torch.device) -> dict:
    """The slowdown of every stage in this process, with its thread settings and the load seen."""
    info = environment(device=device)
    calls = stage_calls(model=model, image_channels=image_channels, batch_size=batch_size,
                        noise_multiplicity=noise_multiplicity, sampling_images=sampling_images, device=device)
    rows = []
    for stage, call in calls.items():
        load = list(os.getloadavg())
        rows.append({"stage": stage, **idle_and_busy_seconds(call, rounds=rounds, device=device),
                     "load_average_at_start": load})
        rows[-1]["meets_target"] = rows[-1]["slowdown"] <= SLOWDOWN_TARGET
    info["load_average_at_end"] = list(os.getloadavg())
    return {"environment": info, "rows": rows,
            "settings": {"model": model, "image_channels": image_channels, "batch_size": batch_size,
                         "noise_multiplicity": noise_multiplicity, "sampling_images": sampling_images,
                         "rounds": rounds}}


def measure_in_fresh_process(*, assignments: str, arguments: list[str]) -> dict:
    """`measure` in a new Python process whose environment has ``assignments`` (``A=1,B=2``) added."""
    extra = dict(item.split("=", 1) for item in assignments.split(",") if item)
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "benchmarks.busy_machine", "--worker-json", str(Path(folder) / "r.json"),
                   *arguments]
        subprocess.run(command, env={**os.environ, **extra}, check=True)
        return json.loads((Path(folder) / "r.json").read_text())


def markdown(document: dict) -> str:
    """Slowdown per stage and setting, with the threads and the load each ran under."""
    lines = ["# A busy machine", "",
             f"Each stage timed alone and beside one `while True: pass` process, interleaved "
             f"({document['settings']['rounds']} rounds, medians); target: at most {SLOWDOWN_TARGET:g}x slower. "
             f"Quick profile sizes: {document['settings']['model']} UNet, B={document['settings']['batch_size']}, "
             f"K={document['settings']['noise_multiplicity']}, {document['settings']['sampling_images']} images "
             "per DDIM call.", "",
             "| setting | threads | OMP_WAIT_POLICY | stage | idle s | busy s | slowdown | load at start |",
             "|---|---:|---|---|---:|---:|---:|---|"]
    for run in document["runs"]:
        info = run["environment"]
        for row in run["rows"]:
            lines.append(f"| {run['setting']} | {info['threads']} | {info['omp_wait_policy_env']} | {row['stage']} "
                         f"| {row['idle_median_seconds']:.3f} | {row['busy_median_seconds']:.3f} "
                         f"| {row['slowdown']:.2f} {'✓' if row['meets_target'] else '✗'} "
                         f"| {' '.join(f'{v:.2f}' for v in row['load_average_at_start'])} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the busy-machine measurement (shared with ``python -m benchmarks``)."""
    parser.add_argument("--busy-model", default="quick:1", help="model:channels of the three stages")
    parser.add_argument("--busy-batch", type=int, default=16, help="B images of the DP and pre-training steps")
    parser.add_argument("--busy-multiplicity", type=int, default=1, help="K of the DP step (quick profile: 1)")
    parser.add_argument("--busy-sampling-images", type=int, default=10, help="images per DDIM call")
    parser.add_argument("--busy-rounds", type=int, default=5, help="timed (idle, busy) pairs per stage")
    parser.add_argument("--compare-environments", nargs="*", default=[],
                        help="more settings, each measured in a fresh process, e.g. OMP_WAIT_POLICY=ACTIVE")


def busy_arguments(args: argparse.Namespace) -> list[str]:
    """The options a fresh worker process needs to repeat this measurement."""
    return ["--busy-model", args.busy_model, "--busy-batch", str(args.busy_batch),
            "--busy-multiplicity", str(args.busy_multiplicity),
            "--busy-sampling-images", str(args.busy_sampling_images), "--busy-rounds", str(args.busy_rounds)]


def busy_machine_from_args(args: argparse.Namespace, *, device: torch.device, suffix: str = "") -> str:
    """Measure with the defaults here, then each ``--compare-environments`` setting in its own process."""
    model, channels = args.busy_model.rsplit(":", 1)
    if not channels.isdigit() or min(args.busy_batch, args.busy_multiplicity, args.busy_rounds) < 1:
        raise ConfigError("--busy-model reads model:channels; --busy-batch, --busy-multiplicity and "
                          "--busy-rounds must be positive")
    document = measure(model=model, image_channels=int(channels), batch_size=args.busy_batch,
                       noise_multiplicity=args.busy_multiplicity, sampling_images=args.busy_sampling_images,
                       rounds=args.busy_rounds, device=device)
    if getattr(args, "worker_json", None):
        Path(args.worker_json).write_text(json.dumps(document))
        return f"busy_machine: wrote {args.worker_json}"
    runs = [{"setting": "defaults", **document}]
    for assignments in args.compare_environments:
        runs.append({"setting": assignments, **measure_in_fresh_process(assignments=assignments,
                                                                         arguments=busy_arguments(args))})
    report = {"target_slowdown": SLOWDOWN_TARGET, "settings": document["settings"], "runs": runs}
    return write_report(args.out, f"{BUSY_FILE}{suffix}", report, markdown(report))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.cli import run_command

    def add(parser: argparse.ArgumentParser) -> None:
        add_arguments(parser)
        parser.add_argument("--worker-json", help=argparse.SUPPRESS)

    def run(args: argparse.Namespace, device: torch.device) -> str:
        return busy_machine_from_args(args, device=device, suffix=args.suffix)

    return run_command(argv, prog=None, description=__doc__.splitlines()[0], add_arguments=add, run=run)


if __name__ == "__main__":
    sys.exit(main())
