"""Audit a finished run folder: does its privacy record prove the guarantee it claims?

``privimage audit --run DIR`` calls `audit_run`. It trusts nothing the run
computed about itself and re-derives every number from the run's own records
(DESIGN.md, Privacy; paper Section 3.3 and Appendix E):

- epsilon of the whole ledger with both accountants (RDP, which calibration
  uses, and PRV as a cross-check), against what ``ledger.json`` and
  ``privacy.json`` report and against the target in ``run.json``;
- coverage: the ledger lists the semantic query exactly when the method makes
  one (with the config's z and k), and as many DP-SGD steps as the fine-tuning
  journal says were released (steps lost to a crash and re-done included);
- calibration: every DP-SGD record names one sigma, and at ``config.json``'s
  fine-tuning schedule with the ledger's query it spends the target to within
  calibration's tolerance and never more (checked from the rule, not by
  running the calibration search again);
- identity: the ledger's dataset hash and size equal the sensitive training
  set's (loaded only to hash it, from the data root ``run.json`` records unless
  another is given), and its config hash equals ``config.json``'s;
- custody: no artifact derived from the sensitive data (synthetic images,
  samples, metrics, fine-tuning checkpoints) exists without a ledger, and every
  checkpoint carries a ledger consistent with the journal (the rule a resume
  applies, `privimage.training.journal.checkpoint_account_problem`). Checkpoints are read
  with ``weights_only`` loading: one that holds pickled code is refused, never run;
- released updates: every noisy update kept on disk is charged by the journal
  line that names it, with the same SHA-256, and every step journalled after the
  newest checkpoint still has its update to replay (see `privimage.training.journal`).

The journal is only read: the audit takes no lock and changes nothing in the folder.

A non-private ablation has nothing to verify: it is reported as ``no guarantee``,
a status of its own. A folder where nothing derived from the sensitive data
exists yet (a refused or interrupted run) is ``incomplete``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from privimage.config import config_from_dict, config_hash, run_identity
from privimage.data import load_sensitive_train
from privimage.errors import PrivImageError
from privimage.methods import get_method
from privimage.pipeline import resolved_data_root
from privimage.privacy import PrivacyLedger, compute_epsilon
from privimage.privacy.noise import noise_generator_name
from privimage.run_folder import RELEASE_FILES, read_json, read_json_mapping
from privimage.semantics.stage import resolve_query_settings
from privimage.training.checkpoint import CheckpointUnreadable, list_checkpoints, load_checkpoint
from privimage.training.journal import (
    JOURNAL_NAME,
    UPDATES_DIR,
    checkpoint_account_problem,
    checkpoint_position,
    partial_update_files,
    read_journal_entries,
    sha256_of,
    update_files,
)
from privimage.training.plan import finetune_plan

# What `RunAudit.status` can be, and the exit code `privimage audit` returns for each.
EXIT_CODES = {"pass": 0, "fail": 1, "no guarantee": 3, "incomplete": 4}
# Files of a run folder that are computed from the sensitive data (pipeline.py writes them after the ledger).
DERIVED_FILES = ("synthetic.npz", "samples.png", "metrics.json", "privacy.json")
FINETUNE_DIR = "finetune"
# Accountants are deterministic: a recorded epsilon that differs by more than this was not computed from this ledger.
RECORDED_EPSILON_RTOL = 1e-6
# Every record of one run's DP-SGD names the same sigma (JSON keeps floats exactly; this allows float noise).
SIGMA_RTOL = 1e-9
# Calibration (paper Appendix E, `calibrate_noise_multiplier`) spends the target to within this share, never more.
CALIBRATION_EPSILON_TOLERANCE = 1e-3


@dataclass(frozen=True)
class AuditCheck:
    """One verified claim about a run: its name, whether it holds, and the numbers behind the verdict."""

    name: str
    passed: bool
    detail: str


@dataclass
class RunAudit:
    """The verdict on one run folder.

    ``status`` is ``"pass"`` (every check holds), ``"fail"`` (some check does
    not), ``"no guarantee"`` (a non-private ablation) or ``"incomplete"``
    (nothing derived from the sensitive data exists yet).
    """

    run_dir: Path
    method: str
    status: str
    checks: list[AuditCheck] = field(default_factory=list)
    epsilon_rdp: float | None = None
    epsilon_prv: float | None = None
    delta: float | None = None
    target_epsilon: float | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @property
    def failed(self) -> list[AuditCheck]:
        return [check for check in self.checks if not check.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "method": self.method,
            "status": self.status,
            "passed": self.status == "pass",
            "epsilon_rdp": self.epsilon_rdp,
            "epsilon_prv": self.epsilon_prv,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "checks": [asdict(check) for check in self.checks],
        }


# --------------------------------------------------------------------------- reading the run


def _read_run(run_dir: Path):
    """(run.json dict, Config, Method) of a run folder, or a one-line error."""

    if not run_dir.is_dir():
        raise PrivImageError(f"run folder not found: {run_dir}")
    run = read_json(run_dir / "run.json", "not a run folder written by 'privimage run'")
    if not isinstance(run, dict) or not isinstance(run.get("method"), str):
        raise PrivImageError(f"{run_dir / 'run.json'} does not name a method")
    config_dict = read_json(run_dir / "config.json", "the run's resolved config is missing")
    if not isinstance(config_dict, dict):
        raise PrivImageError(f"{run_dir / 'config.json'} is not a config mapping")
    config = config_from_dict(config_dict, source=str(run_dir / "config.json"))
    return run, config, get_method(run["method"])


def _derived_artifacts(run_dir: Path) -> list[str]:
    """Artifacts of the run folder computed from the sensitive data, relative to it."""

    found = [name for name in DERIVED_FILES if (run_dir / name).exists()]
    found += [str(path.relative_to(run_dir)) for path in reversed(list_checkpoints(run_dir / FINETUNE_DIR))]
    return found


def _without_timestamps(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry without its timestamps, for comparing two records of the same mechanism."""
    return {key: value for key, value in entry.items() if "time" not in key}


def _close(a: float, b: float, rtol: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=rtol, abs_tol=0.0)


class _Checks:
    """Collects checks; a check whose code raises a `PrivImageError` fails with that message."""

    def __init__(self) -> None:
        self.items: list[AuditCheck] = []

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.items.append(AuditCheck(name=name, passed=bool(passed), detail=detail))

    def run(self, name: str, check: Callable[[], tuple[bool, str]]) -> None:
        try:
            passed, detail = check()
        except PrivImageError as exc:
            passed, detail = False, str(exc).splitlines()[0]
        self.add(name, passed, detail)


# --------------------------------------------------------------------------- the audit


def audit_run(*, run_dir: Path, data_root: Path | None = None) -> RunAudit:
    """Re-derive and check the privacy claims of a run folder written by ``privimage run``.

    Args:
        run_dir: the run folder (holds ``run.json``, ``config.json`` and, for a
            private run, ``ledger.json``).
        data_root: folder of real datasets (the sensitive set is loaded only to
            compare its hash and size with the ledger's). None: the data root
            ``run.json`` records, else ``$PRIVIMAGE_DATA``, else ``./data``.

    Returns:
        The `RunAudit`: every check with its verdict and detail, both epsilons, delta and status.

    Raises:
        PrivImageError: the folder is not a readable run folder (no or corrupt
            ``run.json`` / ``config.json``, unknown method).
    """
    run_dir = Path(run_dir)
    run, config, method = _read_run(run_dir)
    derived = _derived_artifacts(run_dir)
    ledger_path = run_dir / "ledger.json"
    audit = RunAudit(run_dir=run_dir, method=method.name, status="pass")
    checks = _Checks()

    # Non-private ablations: there is no guarantee to verify, only that the folder does not claim one.
    if not method.private:
        _audit_nonprivate(run_dir=run_dir, ledger_path=ledger_path, checks=checks)
        return _conclude(audit, checks, "no guarantee")

    target = run.get("epsilon")
    audit.target_epsilon = float(target) if isinstance(target, (int, float)) else None
    # Custody: anything computed from the sensitive data must sit beside the ledger that accounts for it.
    if not ledger_path.exists():
        _check_custody_without_ledger(run_dir, derived, checks)
        return _conclude(audit, checks, "incomplete")
    checks.add("artifacts_covered_by_ledger", True,
               f"ledger.json covers {', '.join(derived) if derived else 'the run (no derived artifacts yet)'}")
    checks.run("no_uncharged_release", lambda: _check_no_release(run_dir))
    ledger = _account_ledger(ledger_path, audit, checks)
    if ledger is not None:
        _check_private_records(run_dir=run_dir, run=run, config=config, method=method, ledger=ledger,
                               audit=audit, checks=checks, data_root=data_root)
    return _conclude(audit, checks, "pass")


def _conclude(audit: RunAudit, checks: _Checks, status: str) -> RunAudit:
    """The audit with its checks and a status: ``fail`` when a check failed, else ``status``."""
    audit.checks = checks.items
    audit.status = "fail" if audit.failed else status
    return audit


def _check_custody_without_ledger(run_dir: Path, derived: list[str], checks: _Checks) -> None:
    """No ledger.json: a failure when anything derived from the sensitive data exists, else an incomplete run."""
    if derived:
        checks.add("artifacts_covered_by_ledger", False,
                   f"ledger.json is missing but {', '.join(derived)} exist: they are derived from the sensitive "
                   "data with no privacy record")
        return
    released = _Journal.read(run_dir / FINETUNE_DIR).steps
    note = f"; the journal lists {released} released DP-SGD steps: resume the run to account for them" \
        if released else ""
    checks.add("artifacts_covered_by_ledger", True,
               "no ledger.json and nothing derived from the sensitive data yet (refused or unfinished run)" + note)


def _account_ledger(ledger_path: Path, audit: RunAudit, checks: _Checks):
    """The run's `PrivacyLedger` with ``audit``'s delta and epsilons set, or None once a check says it is unusable."""

    try:
        ledger = PrivacyLedger.load(ledger_path)
    except PrivImageError as exc:
        checks.add("ledger_valid", False, str(exc).splitlines()[0])
        return None
    checks.add("ledger_valid", True, f"{len(ledger.entries)} entries, delta {ledger.delta:g}, "
                                     f"N={ledger.num_examples}, add/remove-one neighbouring")
    audit.delta = ledger.delta

    # Epsilon from the ledger with both accountants (paper Theorem E.2); a ledger they cannot bound fails.
    try:
        audit.epsilon_rdp = ledger.epsilon(accountant="rdp")
    except PrivImageError as exc:
        checks.add("epsilon_accountable", False, str(exc).splitlines()[0])
        return None
    # PRV only cross-checks RDP: where it cannot size its grid, the run says so in privacy.json.
    audit.epsilon_prv, prv_unavailable = ledger.prv_cross_check()
    checks.run("epsilon_accountable", lambda: _check_accountable(ledger, audit, prv_unavailable))
    return ledger


def _check_private_records(*, run_dir: Path, run: dict, config, method, ledger, audit: RunAudit, checks: _Checks,
                           data_root: Path | None) -> None:
    """Every check of a private run whose ledger the accountants bound, in the order they are reported."""
    finetune = run_dir / FINETUNE_DIR
    checks.run("epsilon_recorded", lambda: _check_recorded_epsilon(run_dir, audit, run_dir / "ledger.json"))
    checks.run("epsilon_within_target", lambda: _check_target(audit))
    checks.run("delta_matches_run", lambda: _check_delta(run, config, ledger))
    checks.run("dataset_hash", lambda: _check_dataset(config, ledger, *_data_root_of(run, data_root)))
    checks.run("config_hash", lambda: _check_config_hash(config, ledger))
    checks.run("semantic_query_recorded", lambda: _check_query(method, config, ledger, _data_root_of(run, data_root)[0]))
    checks.run("pretraining_data_recorded", lambda: _check_pretraining_record(run_dir, method))
    journal = _Journal.read(finetune)
    checks.run("dpsgd_steps_match_journal", lambda: _check_journal(journal, ledger))
    checks.run("noise_multiplier_calibrated", lambda: _check_calibration(audit, method, config, ledger, journal))
    checks.run("noise_generator", lambda: _check_generators(config, ledger))
    checks.run("checkpoints_carry_ledger", lambda: _check_checkpoints(finetune, ledger, journal))
    checks.run("released_updates_charged", lambda: _check_released_updates(finetune, journal))
    if (run_dir / "metrics.json").exists():
        checks.run("metrics_labelled_reporting_only", lambda: _check_metrics_label(run_dir / "metrics.json"))


def _audit_nonprivate(*, run_dir: Path, ledger_path: Path, checks: _Checks) -> None:
    """A non-private run must say it has no guarantee, and must not look like a private one."""
    privacy_path = run_dir / "privacy.json"
    if privacy_path.exists():
        privacy = read_json(privacy_path, "")
        guarantee = privacy.get("guarantee") if isinstance(privacy, dict) else None
        checks.add("privacy_json_says_no_guarantee", guarantee == "none",
                   f"privacy.json states guarantee {guarantee!r} (a non-private ablation must state 'none')")
    if ledger_path.exists():
        checks.add("no_ledger_for_nonprivate_run", False,
                   "ledger.json exists in a non-private run: its epsilon would not describe what this run did")


def _check_recorded_epsilon(run_dir: Path, audit: RunAudit, ledger_path: Path) -> tuple[bool, str]:
    """The epsilons the run wrote down are the ones its ledger gives."""
    recorded: list[tuple[str, Any, float]] = []
    stored = read_json(ledger_path, "")
    recorded.append(("ledger.json epsilon_rdp", stored.get("epsilon_rdp"), audit.epsilon_rdp))
    privacy_path = run_dir / "privacy.json"
    if privacy_path.exists():
        privacy = read_json(privacy_path, "")
        if not isinstance(privacy, dict) or privacy.get("guarantee") != "differential privacy":
            return False, "privacy.json does not state the differential-privacy guarantee of a private method"
        recorded.append(("privacy.json epsilon", privacy.get("epsilon"), audit.epsilon_rdp))
        if audit.epsilon_prv is None:
            # The cross-check could not run now; the run must not have recorded a value either.
            if privacy.get("epsilon_prv") is not None:
                return False, f"privacy.json epsilon_prv = {privacy.get('epsilon_prv')!r}, but PRV cannot bound this ledger"
        else:
            recorded.append(("privacy.json epsilon_prv", privacy.get("epsilon_prv"), audit.epsilon_prv))
    wrong = [f"{name} = {value!r}, recomputed {fresh:.6g}" for name, value, fresh in recorded
             if not isinstance(value, (int, float)) or not _close(value, fresh, RECORDED_EPSILON_RTOL)]
    if wrong:
        return False, "; ".join(wrong)
    return True, f"recomputed epsilon_rdp {audit.epsilon_rdp:.6g} and epsilon_prv {_format_epsilon(audit.epsilon_prv)} " \
                 f"equal {', '.join(name for name, _, _ in recorded)}"


def _format_epsilon(value: float | None) -> str:
    return "unavailable" if value is None else f"{value:.6g}"


def _check_accountable(ledger, audit: RunAudit, prv_unavailable: str | None) -> tuple[bool, str]:
    """RDP bounds the ledger; PRV cross-checks it where its grid fits (a run past that is reported, not failed)."""
    if prv_unavailable is None:
        return True, f"RDP {audit.epsilon_rdp:.6g}, PRV {audit.epsilon_prv:.6g}"
    return True, f"RDP {audit.epsilon_rdp:.6g}; PRV cross-check unavailable: {prv_unavailable}"


def _check_target(audit: RunAudit) -> tuple[bool, str]:
    """Both accountants keep the run within its target (calibration uses RDP; PRV cross-checks)."""
    if audit.target_epsilon is None:
        return False, "run.json names no target epsilon"
    within = audit.epsilon_rdp <= audit.target_epsilon and (audit.epsilon_prv is None
                                                            or audit.epsilon_prv <= audit.target_epsilon)
    return within, (f"epsilon_rdp {audit.epsilon_rdp:.6g}, epsilon_prv {_format_epsilon(audit.epsilon_prv)} "
                    f"{'<=' if within else 'EXCEED'} target {audit.target_epsilon:g} at delta {audit.delta:g}")


def _check_no_release(run_dir: Path) -> tuple[bool, str]:
    """The run folder holds no separate release: its ledger charges the query its own selection made, not that one."""
    held = [name for name in RELEASE_FILES if (run_dir / name).exists()]
    if held:
        return False, (f"{', '.join(held)} in the run folder: a separate release of the sensitive data that "
                       "ledger.json does not charge (the run's own selection lives in the stage cache)")
    return True, "no release of 'privimage select' in the run folder"


def _check_pretraining_record(run_dir: Path, method) -> tuple[bool, str]:
    """pretraining_data.json names data of the kind the method pre-trains on (what a resume is checked against)."""
    record = read_json_mapping(run_dir / "pretraining_data.json", required=("data",))
    data = record["data"]
    kind = {"none": "none", "all": "all:", "selected": "selected:"}.get(method.pretrain_data, method.pretrain_data)
    same = isinstance(data, str) and (data == kind if kind == "none" else data.startswith(kind))
    return same, f"pretraining_data.json data {data!r}; method {method.name} pre-trains on {method.pretrain_data!r}"


def _check_delta(run: dict, config, ledger) -> tuple[bool, str]:
    """One delta everywhere: run.json, config.json and the ledger (already below 1/N by construction)."""
    values = {"ledger": ledger.delta, "config finetune.delta": config.finetune.delta, "run.json": run.get("delta")}
    same = all(isinstance(v, (int, float)) and _close(v, ledger.delta, 1e-12) for v in values.values())
    detail = ", ".join(f"{name} {value!r}" for name, value in values.items())
    return same, f"{detail}; 1/N = {1.0 / ledger.num_examples:.3g}"


def _data_root_of(run: dict, data_root: Path | None) -> tuple[Path | None, str]:
    """The data root to hash the sensitive set from, and where that choice came from."""
    if data_root is not None:
        return Path(data_root), "--data-root"
    recorded = run.get("data_root")
    if isinstance(recorded, str) and recorded:
        return Path(recorded), "run.json"
    # Runs written before run.json recorded it: the default root, as the run itself would have used.
    return None, "default"


def _check_dataset(config, ledger, data_root: Path | None, source: str) -> tuple[bool, str]:
    """The ledger accounts for this sensitive set: same content hash and size (only the hash is read)."""

    sensitive = load_sensitive_train(config, data_root=data_root)
    actual = sensitive.content_hash()
    same = actual == ledger.dataset_hash and len(sensitive) == ledger.num_examples
    return same, (f"ledger {ledger.dataset_hash[:16]} (N={ledger.num_examples}), "
                  f"{config.data.sensitive}/train {actual[:16]} (N={len(sensitive)}) "
                  f"under {resolved_data_root(data_root)} (data root from {source})")


def _check_config_hash(config, ledger) -> tuple[bool, str]:
    """The ledger was written for the config saved beside it."""

    expected = config_hash(run_identity(config))
    return ledger.config_hash == expected, f"ledger {ledger.config_hash or '(none)'}, config.json {expected}"


def _check_query(method, config, ledger, data_root: Path | None) -> tuple[bool, str]:
    """Exactly one semantic query when the method selects public data by it, none otherwise (Theorem 3.1),
    at the config's z and k (k = N when the config leaves it to N)."""

    queries = [e for e in ledger.entries if e["mechanism"] == "semantic_query"]
    if not method.uses_query:
        return not queries, f"method {method.name} makes no semantic query; the ledger lists {len(queries)}"
    if len(queries) != 1:
        return False, f"method {method.name} makes one semantic query; the ledger lists {len(queries)}"
    query = queries[0]
    settings = resolve_query_settings(config, data_root=data_root)
    wanted = (settings.query_noise_multiplier, settings.k)
    same = _close(query["query_noise_multiplier"], wanted[0], 1e-12) and query["k"] == wanted[1]
    return same, (f"ledger z={query['query_noise_multiplier']:g} k={query['k']}; "
                  f"config z={wanted[0]:g} k={wanted[1]}")


@dataclass(frozen=True)
class _Journal:
    """What a fine-tuning folder's DP-SGD journal says: its header and the steps it released."""

    path: Path
    header: dict[str, Any] | None
    entries: tuple = ()
    error: str | None = None

    @property
    def steps(self) -> int:
        """Released steps; a torn line counts, as training counts it."""
        return len(self.entries)

    @classmethod
    def read(cls, folder: Path) -> "_Journal":
        path = folder / JOURNAL_NAME
        if not path.is_file():
            return cls(path=path, header=None, error=f"{path} not found")
        try:
            # Read-only: no lock taken, nothing settled or rewritten (a running fine-tuning keeps its folder).
            header, entries = read_journal_entries(path)
        except (OSError, UnicodeDecodeError, PrivImageError) as exc:
            return cls(path=path, header=None, error=f"{path}: unreadable journal ({exc})")
        return cls(path=path, header=header, entries=tuple(entries))


def _dpsgd_entries(ledger) -> list[dict[str, Any]]:
    return [e for e in ledger.entries if e["mechanism"] == "dp_sgd"]


def _check_journal(journal: _Journal, ledger) -> tuple[bool, str]:
    """Every released DP-SGD step is charged, and nothing else is: ledger steps == journal steps."""
    charged = sum(e["steps"] for e in _dpsgd_entries(ledger))
    if journal.error:
        return False, f"{journal.error}; the ledger charges {charged} DP-SGD steps that nothing corroborates"
    if journal.header.get("dataset_hash") != ledger.dataset_hash:
        return False, f"{journal.path} is for another sensitive dataset than the ledger"
    return charged == journal.steps, f"ledger charges {charged} DP-SGD steps, the journal released {journal.steps}"


def _check_calibration(audit: RunAudit, method, config, ledger, journal: _Journal) -> tuple[bool, str]:
    """The recorded sigma meets Appendix E's calibration rule (Theorem E.3), checked from its definition.

    At config.json's schedule (q, T) and with the ledger's query, the one sigma
    every DP-SGD record names spends the target epsilon (RDP) to within
    `CALIBRATION_EPSILON_TOLERANCE` of it and never more, which is what
    calibration guarantees of the sigma it returns.
    """

    entries = _dpsgd_entries(ledger)
    if not entries:
        return False, "the ledger holds no DP-SGD steps"
    # The schedule the method's generator family runs (a GAN's discriminator: finetune.gan_epochs).
    plan = finetune_plan(generator=method.generator, settings=config.finetune, num_examples=ledger.num_examples)
    sample_rate, steps = plan.sample_rate, plan.steps
    queries = [e for e in ledger.entries if e["mechanism"] == "semantic_query"]
    if audit.target_epsilon is None:
        return False, "run.json names no target epsilon to calibrate to"
    if len(queries) > 1:
        return False, f"the ledger holds {len(queries)} semantic queries; a run makes at most one"
    planned = journal.header.get("total_steps") if journal.header is not None else None
    if planned is not None and planned != steps:
        return False, f"the journal planned {planned} DP-SGD steps, config.json's schedule gives {steps}"
    recorded = [(e["noise_multiplier"], e["sample_rate"]) for e in entries]
    if journal.header is not None:
        recorded.append((journal.header.get("noise_multiplier"), journal.header.get("sample_rate")))
    listing = ", ".join(dict.fromkeys(f"sigma {s!r} q {q!r}" for s, q in recorded))
    if not all(isinstance(s, (int, float)) and isinstance(q, (int, float)) for s, q in recorded):
        return False, f"recorded {listing}: not all numbers"
    # One sigma and config.json's q in every record; that sigma is then held to the calibration rule.
    sigma = recorded[0][0]
    same = all(_close(s, sigma, SIGMA_RTOL) and _close(q, sample_rate, 1e-12) for s, q in recorded)
    spent = compute_epsilon(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=ledger.delta,
                            query_noise_multiplier=queries[0]["query_noise_multiplier"] if queries else None,
                            k=queries[0]["k"] if queries else 1)
    floor = (1.0 - CALIBRATION_EPSILON_TOLERANCE) * audit.target_epsilon
    calibrated = floor <= spent <= audit.target_epsilon
    detail = (f"sigma {sigma:.6g} at q={sample_rate:g}, T={steps} spends epsilon {spent:.6g}, "
              f"{'within' if calibrated else 'OUTSIDE'} calibration's [{floor:.6g}, {audit.target_epsilon:g}] "
              f"for target {audit.target_epsilon:g}; recorded {listing}")
    return same and calibrated, detail


def _check_generators(config, ledger) -> tuple[bool, str]:
    """Every mechanism drew its noise from the generator secure_mode asks for."""

    wanted = noise_generator_name(secure_mode=config.finetune.secure_mode)
    used = sorted({e["generator"] for e in ledger.entries})
    return used == [wanted], f"finetune.secure_mode={config.finetune.secure_mode} asks for {wanted!r}; ledger: {used}"


def _check_checkpoints(folder: Path, ledger, journal: _Journal) -> tuple[bool, str]:
    """Each fine-tuning checkpoint carries a ledger: the run's query plus the steps released by then."""

    paths = list_checkpoints(folder)
    if not paths:
        return True, "no fine-tuning checkpoints"
    queries = [_without_timestamps(e) for e in ledger.entries if e["mechanism"] == "semantic_query"]
    problems = []
    for path in paths:
        try:
            # weights_only loading: a checkpoint holding pickled code is refused without running it.
            payload = load_checkpoint(path)
            stored = PrivacyLedger.from_dict(payload.get("ledger"))
        except (PrivImageError, CheckpointUnreadable) as exc:
            problems.append(str(exc).splitlines()[0])
            continue
        # The rule a resume holds a checkpoint to: its ledger charges what the journal listed then.
        steps = sum(e["steps"] for e in _dpsgd_entries(stored))
        account = checkpoint_account_problem(payload, charged_steps=steps, journal_steps=journal.steps)
        if stored.dataset_hash != ledger.dataset_hash:
            problems.append(f"{path.name}: ledger of another sensitive dataset")
        elif [_without_timestamps(e) for e in stored.entries if e["mechanism"] == "semantic_query"] != queries:
            problems.append(f"{path.name}: its ledger's semantic query differs from ledger.json's")
        elif account is not None:
            problems.append(f"{path.name}: {account}")
    if problems:
        return False, "; ".join(problems)
    return True, f"{len(paths)} checkpoint(s) read weights-only, each with a consistent ledger"


def _check_released_updates(folder: Path, journal: _Journal) -> tuple[bool, str]:
    """Released updates on disk are charged, and the steps after the newest checkpoint can be replayed."""

    if journal.error:
        return False, journal.error
    updates_dir = folder / UPDATES_DIR
    by_release = {entry.release: entry for entry in journal.entries}
    problems = []
    # A noisy update on disk is a release: the journal must charge it, for exactly these bytes.
    files = update_files(updates_dir)
    for release, (_step, path) in sorted(files.items()):
        entry = by_release.get(release)
        if entry is None or entry.unapplied:
            problems.append(f"{path.name}: a released update no journal line charges")
        elif entry.torn:
            # A kill mid-write cut the line that charges it: the step counts; a resume completes the line.
            problems.append(f"{path.name}: journal line {release} was cut off while being written (the step is "
                            "charged; resume the run to complete the line)")
        elif entry.update != path.name or entry.sha256 != sha256_of(path):
            problems.append(f"{path.name}: its SHA-256 differs from journal line {release} (altered after release)")
    problems += [f"{path.name}: part of an update written and not yet charged (resume the run to charge it)"
                 for path in partial_update_files(updates_dir)]
    # The steps after the newest readable checkpoint live only in their update files
    # (one naming no journal line is unusable; checkpoints_carry_ledger reports it).
    position, newest = 0, "no checkpoint"
    for path in list_checkpoints(folder):
        try:
            position, newest = checkpoint_position(load_checkpoint(path)), path.name
        except (PrivImageError, CheckpointUnreadable):
            continue
        break
    pending = [entry for entry in journal.entries[position:] if not entry.unapplied]
    for entry in pending:
        if entry.release not in files or not entry.replayable:
            problems.append(f"journal line {entry.release} (step {entry.step}) came after {newest} "
                            "and has no update to replay")
    if problems:
        return False, "; ".join(problems)
    unapplied = sum(entry.unapplied for entry in journal.entries)
    return True, (f"{len(files)} update file(s) kept, each charged by its journal line with the same SHA-256; "
                  f"{len(pending)} step(s) after {newest} await replay; {unapplied} charged but never applied")


def _check_metrics_label(path: Path) -> tuple[bool, str]:
    """FID and accuracy read the sensitive test split, outside the guarantee: the file must say so."""
    metrics = read_json(path, "")
    label = metrics.get("reporting_only") if isinstance(metrics, dict) else None
    return bool(label), f"metrics.json reporting_only: {label!r}"
