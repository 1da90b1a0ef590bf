"""Fine-tuning learning rates measured on a public stand-in for the sensitive data.

``python -m benchmarks.finetune_proxy --out results/benchmarks`` writes
``finetune_proxy.json`` and ``finetune_proxy.md``.

Why a stand-in: the privacy rules forbid choosing any setting on the sensitive
data (DESIGN.md, "Privacy: what must be true"), and that includes the
fine-tuning learning rate. This benchmark answers the question on public data
only. The stand-in has MNIST-5k's shape, sizes and class names: 400 training
and 100 test images of each digit, drawn from Glyphs-1k's handwritten digit
forms (`privimage.data.handwriting`) with random streams the corpus never
uses. Each method is pre-trained exactly as in a real run (the same cached
stage; Privimage+D makes its noisy semantic query on the stand-in). It is then
fine-tuned on the stand-in at each learning rate, with DP-SGD at the profile's
budget or without noise (NonPrivD). FID is taken against the stand-in's test
split; the row ``pretrained`` is the same generator before fine-tuning.

A learning rate that leaves FID above the ``pretrained`` row destroys more
than fine-tuning teaches. At lr 3e-3, PDP-Diffusion ended there, and the
noise-free NonPrivD 3.5-4.2 times worse than at 1e-3 or 3e-4.

The stand-in is an easier target than MNIST: Glyphs-1k holds the same digit
forms, so the pre-trained models have seen their like. The benchmark compares
learning rates with each other; its FID values say nothing about MNIST.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from privimage.cache import atomic_save_npz
from privimage.data.mnist5k import CLASS_NAMES
from privimage.errors import ConfigError

PROXY_NAME = "finetune-proxy"
PROXY_FILE = "finetune_proxy"
# MNIST-5k's class names, so that the stand-in reads like the data it stands for.
DIGIT_NAMES = CLASS_NAMES
# Salt of the stand-in's random streams. Glyphs-1k seeds its streams with
# [dataset_seed, split, label]: three numbers, never four, so no stand-in image
# repeats a corpus image.
PROXY_SALT = 20261130


def write_proxy(data_root: Path, *, train_per_class: int = 400, test_per_class: int = 100) -> Path:
    """Render the stand-in into ``<data_root>/finetune-proxy/{train,test}.npz``; returns the folder.

    The sizes default to MNIST-5k's (4,000 training and 1,000 test digits).
    Rendering is deterministic, so an existing folder is rewritten identically.
    """
    from privimage.data.glyphs import render_glyph

    if min(train_per_class, test_per_class) < 1:
        raise ConfigError(f"the stand-in needs at least one image per class and split, "
                          f"got {train_per_class} and {test_per_class}")
    folder = Path(data_root) / PROXY_NAME
    folder.mkdir(parents=True, exist_ok=True)
    for split_index, (split, count) in enumerate((("train", train_per_class), ("test", test_per_class))):
        images = np.empty((10 * count, 1, 32, 32), dtype=np.uint8)
        for digit in range(10):
            rng = np.random.default_rng([PROXY_SALT, split_index, digit, 0])
            for i in range(count):
                # face 0 is unused: the ten digits are drawn from their handwritten forms.
                images[digit * count + i, 0] = render_glyph(str(digit), 0, rng)
        labels = np.repeat(np.arange(10), count)
        atomic_save_npz(folder / f"{split}.npz", x=images, y=labels, class_names=np.array(DIGIT_NAMES))
    return folder


def measure(*, profile: str, methods: list[str], lrs: list[float], epsilon: float, seed: int,
            data_root: Path, progress: bool = True) -> list[dict]:
    """One row per method before fine-tuning and per (method, learning rate) after it."""
    from privimage.experiments import GridPoint, experiment_config, run_point
    from privimage.stages import pretrained_only
    from privimage.methods import get_method

    rows = []
    for method in methods:
        recipe = get_method(method)
        base = {"data.sensitive": f"npz:{PROXY_NAME}"}
        if recipe.pretrain_data != "none":
            config = experiment_config(profile=profile, seed=seed, overrides=base)
            row = pretrained_only(config=config, method=method, data_root=data_root, progress=progress)
            rows.append({"method": method, "lr": None, "stage": "pretrained", "fid": row["fid"]})
        for lr in lrs:
            config = experiment_config(profile=profile, seed=seed, overrides={**base, "finetune.lr": lr})
            row = run_point(config=config, data_root=data_root, progress=progress,
                            point=GridPoint(method=method, epsilon=epsilon if recipe.private else None, seed=seed))
            rows.append({"method": method, "lr": lr, "stage": "fine-tuned", "fid": row["fid"],
                         "ca_cnn": row.get("ca_cnn"), "run_dir": row.get("run_dir")})
    return rows


def markdown(rows: list[dict], *, profile: str, epsilon: float, seed: int) -> str:
    lines = [
        "# Fine-tuning learning rate on a public stand-in for MNIST-5k",
        "",
        f"- Profile '{profile}', seed {seed}; private methods at epsilon {epsilon:g}; NonPrivD without noise.",
        "- Stand-in: Glyphs-1k's handwritten digit forms, 400 + 100 per digit (public data only).",
        "- FID against the stand-in's test split; `pretrained`: before fine-tuning.",
        "",
        "| method | stage | lr | FID | CA (CNN) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lr = "-" if row["lr"] is None else f"{row['lr']:g}"
        ca = row.get("ca_cnn")
        ca_text = "-" if ca is None or (isinstance(ca, float) and math.isnan(ca)) else f"{ca:.3f}"
        lines.append(f"| {row['method']} | {row['stage']} | {lr} | {row['fid']:.0f} | {ca_text} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", help="smoke, quick, paper or a YAML path")
    parser.add_argument("--methods", nargs="+", default=["privimage-d", "pdp-diffusion", "nonpriv-d"],
                        help="diffusion methods to fine-tune")
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-3, 3e-4], help="learning rates")
    parser.add_argument("--epsilon", type=float, default=10.0, help="budget of the private methods")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and sampling")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="where the stand-in is written (default: $PRIVIMAGE_DATA, else ./data)")


def finetune_proxy_from_args(args: argparse.Namespace) -> str:
    from privimage.data.registry import resolve_data_root
    from privimage.methods import get_method

    for method in args.methods:
        if get_method(method).generator != "diffusion":
            raise ConfigError(f"--methods: {method} is not a diffusion method")
    if any(lr <= 0 for lr in args.lrs):
        raise ConfigError(f"--lrs must be positive, got {args.lrs}")
    data_root = resolve_data_root(args.data_root)
    write_proxy(data_root)
    rows = measure(profile=args.profile, methods=args.methods, lrs=args.lrs, epsilon=args.epsilon,
                   seed=args.seed, data_root=data_root)
    from benchmarks.cli import write_report

    document = {"profile": args.profile, "epsilon": args.epsilon, "seed": args.seed, "rows": rows}
    return "finetune_proxy: " + write_report(
        args.out, f"{PROXY_FILE}{args.suffix}", document,
        markdown(rows, profile=args.profile, epsilon=args.epsilon, seed=args.seed))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.cli import run_command

    return run_command(argv, prog="python -m benchmarks.finetune_proxy", description=__doc__.splitlines()[0],
                       add_arguments=add_arguments, run=lambda args, device: finetune_proxy_from_args(args))


if __name__ == "__main__":
    sys.exit(main())
