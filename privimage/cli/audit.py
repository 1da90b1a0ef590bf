"""``privimage audit``: re-derive a run's privacy guarantee from its own records and check every claim.

    privimage audit --run runs/smoke/privimage-d-mnist5k-eps10-seed0-... --json

Exit status: 0 every check passed; 1 a check failed; 3 a non-private ablation
(no guarantee to verify); 4 an incomplete run (nothing derived from the
sensitive data yet); 2 the folder is not a readable run folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from privimage.cli.common import emit, finish_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="check a run folder's privacy record: epsilon (RDP and PRV), coverage, calibration, dataset hash",
        description="Re-derive epsilon from the run's ledger with the RDP and PRV accountants, and check that the "
        "ledger covers the semantic query (when the method makes one) and every DP-SGD step the fine-tuning "
        "journal released, that the recorded noise multipliers are the ones config.json calibrates, that the "
        "ledger names the sensitive training set (by hash), that epsilon stays within run.json's target, and "
        "that no artifact derived from the sensitive data lacks a ledger. Exit status: 0 pass, 1 a check "
        "failed, 3 non-private run (no guarantee), 4 incomplete run, 2 unreadable run folder.",
    )
    parser.add_argument("--run", type=Path, required=True, help="the run folder written by 'privimage run'")
    parser.add_argument(
        "--data-root", type=Path, default=None,
        help="folder holding the sensitive dataset (default: the data root run.json records, else $PRIVIMAGE_DATA, "
        "else ./data)",
    )
    finish_command(parser, _audit, profile=False, data_root=False)


def _audit(args: argparse.Namespace) -> int:
    from privimage.run_audit import audit_run

    # Without --data-root the audit hashes the data where the run recorded reading it (run.json).
    audit = audit_run(run_dir=args.run, data_root=args.data_root)
    lines = [f"{'PASS' if check.passed else 'FAIL'}  {check.name:<28} {check.detail}" for check in audit.checks]
    if audit.epsilon_rdp is not None:
        target = "none" if audit.target_epsilon is None else f"{audit.target_epsilon:g}"
        prv = "unavailable" if audit.epsilon_prv is None else f"{audit.epsilon_prv:.4f}"
        lines.append(f"epsilon {audit.epsilon_rdp:.4f} (RDP), {prv} (PRV) at delta {audit.delta:g}; "
                     f"target {target}")
    lines.append(f"{audit.status}: {audit.method} run in {audit.run_dir}")
    emit(audit.to_dict(), args.json, "\n".join(lines))
    return audit.exit_code
