"""``privimage evaluate``: FID and classification accuracy of a synthetic dataset.

    privimage evaluate --synthetic samples.npz --sensitive mnist5k --json

The ``.npz`` holds ``x`` (uint8 images, NCHW or NHWC) and ``y`` (integer labels).
FID uses pytorch-fid's Inception when its weights are on the machine, else the
offline public-data backbone; the output names which, and both sample counts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from privimage.cli.common import data_root_option, emit, finish_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="FID and LR/MLP/CNN accuracy of a synthetic dataset (paper Table 2)",
        description="Evaluate a synthetic .npz (x: uint8 images, y: labels) against a sensitive dataset's test split.",
    )
    parser.add_argument("--synthetic", type=Path, required=True, help=".npz with arrays x (uint8 images) and y (labels)")
    parser.add_argument("--sensitive", default=None, help="sensitive dataset name (default: the profile's data.sensitive)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the classifiers and their validation split")
    parser.add_argument("--download-inception", action="store_true",
                        help="download pytorch-fid's Inception weights first (needs a network)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    finish_command(parser, run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from privimage.config import load_config
    from privimage.evaluation.datasets import load_test_split
    from privimage.evaluation.evaluate import evaluate_synthetic
    from privimage.evaluation.fid import download_inception_weights
    from privimage.evaluation.synthetic import load_synthetic_npz

    overrides = {}
    if args.sensitive is not None:
        overrides["data.sensitive"] = args.sensitive
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = load_config(args.profile, overrides)
    data_root = data_root_option(args)

    if args.download_inception:
        download_inception_weights()
    # Read and check the synthetic file against the test split before any work.
    test = load_test_split(name=config.data.sensitive, data_root=data_root, config=config.data)
    synthetic = load_synthetic_npz(path=args.synthetic, reference=test)
    result = evaluate_synthetic(synthetic=synthetic, config=config, data_root=data_root, test=test,
                                progress=args.progress)
    ca = result["ca"]
    human = (
        f"FID {result['fid']:.2f} ({result['fid_backbone']}, {result['fid_scale']}, {result['fid_num_synthetic']} "
        f"synthetic vs {result['fid_num_real']} real)\n"
        f"CA  LR {ca['lr']:.1%}  MLP {ca['mlp']:.1%}  CNN {ca['cnn']:.1%}  (tested on {result['ca_test_split']})"
    )
    emit(result, args.json, human)
    return 0
