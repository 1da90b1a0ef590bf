"""``privimage methods`` and ``privimage run``: the methods of the paper (Section 4.2) end to end.

``privimage run`` works unchanged under ``torchrun --nproc_per_node N [--nnodes M ...]``:
the processes train together and rank 0 alone writes and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from privimage.cli.common import data_root_option, emit, finish_command


def register(subparsers: argparse._SubParsersAction) -> None:
    methods = subparsers.add_parser("methods", help="list the methods with one line each")
    finish_command(methods, _methods, profile=False, data_root=False)

    run = subparsers.add_parser(
        "run",
        help="run or resume one method: selection, pre-training, fine-tuning, sampling, evaluation",
        description="Run all stages of a method and print the run folder, which holds config.json, run.json, "
        "ledger.json (private methods), privacy.json, synthetic.npz, samples.png, metrics.json and "
        "resources.json. Re-running the same command resumes. Under torchrun every process trains and rank 0 "
        "writes the files and prints.",
    )
    run.add_argument("--method", required=True, help="a name from 'privimage methods'")
    run.add_argument("--sensitive", default=None, help="sensitive dataset (default: the profile's)")
    run.add_argument("--public", default=None, help="public dataset (default: the profile's)")
    run.add_argument("--epsilon", type=float, default=None, help="total privacy budget of the run (query + DP-SGD)")
    run.add_argument("--delta", type=float, default=None, help="delta (default: the profile's, below 1/N)")
    run.add_argument("--seed", type=int, default=None, help="seed of initialisation, sampling and evaluation (never DP noise)")
    run.add_argument("--out", type=Path, default=None, help="run folder (default: <cache>/runs/<profile>/<method>-...)")
    run.add_argument("--dry-run", action="store_true",
                     help="resolve the config and privacy schedule without training; print JSON")
    run.add_argument("--world-size", type=int, default=None,
                     help="with --dry-run: processes to plan per-rank batches for (default: $WORLD_SIZE, else 1)")
    run.add_argument("--no-evaluate", action="store_true", help="skip FID and classifier accuracy")
    finish_command(run, _run)


def _methods(args: argparse.Namespace) -> int:
    from privimage.methods import METHODS

    rows = {name: method.summary for name, method in METHODS.items()}
    emit({"methods": rows}, args.json, human="\n".join(f"{name:<14} {summary}" for name, summary in rows.items()))
    return 0


def _run(args: argparse.Namespace) -> int:
    from privimage import distributed
    from privimage.config import load_config
    from privimage.errors import ConfigError
    from privimage.methods import get_method
    from privimage.pipeline import dry_run, run_method

    if args.epsilon is not None and not get_method(args.method).private:
        raise ConfigError(f"method '{args.method}' is not private and spends no budget: drop --epsilon")
    overrides = {"data.sensitive": args.sensitive, "data.public": args.public, "finetune.delta": args.delta,
                 "seed": args.seed}
    config = load_config(args.profile, {key: value for key, value in overrides.items() if value is not None})
    data_root = data_root_option(args)
    if args.dry_run:
        emit(dry_run(method=args.method, config=config, epsilon=args.epsilon, data_root=data_root,
                     world_size=args.world_size), True)
        return 0
    if args.world_size is not None:
        raise ConfigError("--world-size plans a --dry-run; to train on several processes launch with torchrun")
    # Under torchrun: join the process group for the run, leave it after.
    with distributed.process_group():
        result = run_method(method=args.method, config=config, epsilon=args.epsilon, out_dir=args.out,
                            data_root=data_root, evaluate=not args.no_evaluate, progress=not args.json)
        if not distributed.is_main_process():
            # Rank 0 prints the one result; the others only trained.
            return 0
    summary = {"run_dir": str(result.run_dir), "method": result.method, "epsilon": result.epsilon,
               "privacy": result.privacy, "metrics": result.metrics}
    emit(summary, args.json, human=str(result.run_dir))
    return 0
