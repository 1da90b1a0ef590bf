"""``privimage privacy``: epsilon of a run, DP-SGD noise calibration, and saved ledgers (paper Appendix E)."""

from __future__ import annotations

import argparse
from pathlib import Path

from privimage.cli.common import emit, finish_command


def register(subparsers: argparse._SubParsersAction) -> None:
    privacy = subparsers.add_parser(
        "privacy",
        help="privacy accounting: epsilon, noise calibration, saved ledgers",
        description="Account the privacy of DP-SGD composed with the semantic query (RDP via opacus; PRV as a "
        "cross-check), calibrate the DP-SGD noise multiplier to a target budget, or read a saved ledger.",
    )
    commands = privacy.add_subparsers(dest="privacy_command", metavar="SUBCOMMAND")
    commands.required = True

    _add_dpsgd_command(
        commands, "epsilon", func=_epsilon, given=("--noise-multiplier", "DP-SGD sigma"),
        help="epsilon of DP-SGD (plus an optional semantic query)",
        description="Epsilon at DELTA of T DP-SGD steps with noise multiplier S and sample rate Q, composed with "
        "one semantic query of noise multiplier Z (paper Theorem E.2).",
    )
    _add_dpsgd_command(
        commands, "calibrate", func=_calibrate, given=("--target-epsilon", "epsilon of the whole run"),
        help="DP-SGD noise multiplier for a target epsilon",
        description="The smallest DP-SGD sigma whose composition with the semantic query spends at most the "
        "target epsilon at DELTA (paper Theorem E.3).",
    )

    ledger = commands.add_parser(
        "ledger", help="show a saved privacy ledger and its epsilon",
        description="Load a ledger JSON file, validate it, and print its entries and the epsilon they spend.",
    )
    ledger.add_argument("path", type=Path, help="ledger JSON file")
    _add_accountant(ledger)
    finish_command(ledger, _ledger, profile=False, data_root=False)


def _add_accountant(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accountant", choices=("rdp", "prv"), default="rdp", help="accountant (default: rdp)")


def _add_dpsgd_command(commands: argparse._SubParsersAction, name: str, *, func, given: tuple[str, str],
                       help: str, description: str) -> None:
    """``epsilon`` and ``calibrate``: the same DP-SGD schedule, given sigma or given the target epsilon."""
    parser = commands.add_parser(name, help=help, description=description)
    parser.add_argument("--sample-rate", type=float, required=True, help="Poisson sampling rate q")
    parser.add_argument("--steps", type=int, required=True, help="DP-SGD steps T")
    parser.add_argument("--delta", type=float, required=True, help="target delta (below 1/N)")
    parser.add_argument("--query-noise-multiplier", type=float, default=None,
                        help="z of the semantic query (noise std z*sqrt(k)); omit for DP-SGD alone")
    parser.add_argument("--k", type=int, default=1, help="semantics per sensitive image of the query (default: 1)")
    option, option_help = given
    parser.add_argument(option, type=float, required=True, help=option_help)
    _add_accountant(parser)
    finish_command(parser, func, profile=False, data_root=False)


def _epsilon(args: argparse.Namespace) -> int:
    from privimage.privacy import compute_epsilon

    epsilon = compute_epsilon(
        noise_multiplier=args.noise_multiplier, sample_rate=args.sample_rate, steps=args.steps, delta=args.delta,
        query_noise_multiplier=args.query_noise_multiplier, k=args.k, accountant=args.accountant,
    )
    result = {
        "epsilon": epsilon, "delta": args.delta, "accountant": args.accountant,
        "noise_multiplier": args.noise_multiplier, "sample_rate": args.sample_rate, "steps": args.steps,
        "query_noise_multiplier": args.query_noise_multiplier, "k": args.k,
    }
    emit(result, args.json, f"epsilon = {epsilon:.4f} at delta = {args.delta:g} ({args.accountant})")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from privimage.privacy import calibrate_noise_multiplier, compute_epsilon

    sigma = calibrate_noise_multiplier(
        target_epsilon=args.target_epsilon, delta=args.delta, sample_rate=args.sample_rate, steps=args.steps,
        query_noise_multiplier=args.query_noise_multiplier, k=args.k, accountant=args.accountant,
    )
    epsilon = compute_epsilon(
        noise_multiplier=sigma, sample_rate=args.sample_rate, steps=args.steps, delta=args.delta,
        query_noise_multiplier=args.query_noise_multiplier, k=args.k, accountant=args.accountant,
    )
    result = {
        "noise_multiplier": sigma, "epsilon": epsilon, "target_epsilon": args.target_epsilon, "delta": args.delta,
        "accountant": args.accountant, "sample_rate": args.sample_rate, "steps": args.steps,
        "query_noise_multiplier": args.query_noise_multiplier, "k": args.k,
    }
    emit(result, args.json, f"noise multiplier = {sigma:.4f} spends epsilon = {epsilon:.4f} "
                            f"(target {args.target_epsilon:g}) at delta = {args.delta:g} ({args.accountant})")
    return 0


def _ledger(args: argparse.Namespace) -> int:
    from privimage.privacy import PrivacyLedger

    ledger = PrivacyLedger.load(args.path)
    epsilon = ledger.epsilon(accountant=args.accountant)
    result = {
        "epsilon": epsilon, "delta": ledger.delta, "accountant": args.accountant,
        "dataset_hash": ledger.dataset_hash, "num_examples": ledger.num_examples,
        "config_hash": ledger.config_hash, "entries": ledger.entries,
    }
    lines = [f"{args.path}: {len(ledger.entries)} entries on dataset {ledger.dataset_hash[:12]} (N={ledger.num_examples})"]
    for entry in ledger.entries:
        if entry["mechanism"] == "semantic_query":
            lines.append(f"  semantic_query  z={entry['query_noise_multiplier']:g} k={entry['k']} ({entry['generator']})")
        else:
            lines.append(f"  dp_sgd          sigma={entry['noise_multiplier']:g} q={entry['sample_rate']:g} "
                         f"steps={entry['steps']} ({entry['generator']})")
    lines.append(f"epsilon = {epsilon:.4f} at delta = {ledger.delta:g} ({args.accountant})")
    emit(result, args.json, "\n".join(lines))
    return 0
