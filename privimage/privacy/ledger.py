"""The privacy ledger: every mechanism that touched the sensitive data in one run.

DESIGN.md, Privacy: one ledger per run lists the semantic query and the DP-SGD
steps, with their parameters, the neighbouring relation and the sensitive
dataset's hash; epsilon is computed from the whole ledger (paper Theorem E.2).
It is saved as JSON (never pickle) beside every checkpoint and every artifact
derived from sensitive data, and a ledger that names another dataset or config
refuses to load.

Consecutive DP-SGD steps with identical parameters merge into one entry with a
step count, so the training loop can call `record_dpsgd_steps` every step.
"""

from __future__ import annotations

import copy
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from privimage.cache import atomic_write_json
from privimage.errors import PrivacyError
from privimage.privacy.accounting import composition_epsilon
from privimage.privacy.noise import GENERATOR_NAMES
from privimage.privacy.validation import (
    check_delta,
    check_k,
    check_num_examples,
    check_positive,
    check_sample_rate,
    check_steps,
)

LEDGER_FORMAT = "privimage-privacy-ledger"
LEDGER_VERSION = 1
NEIGHBOURING = "add/remove"
# What `record_dpsgd_steps` stores when the caller does not say which generator drew the noise.
UNSPECIFIED_GENERATOR = "unspecified"
MECHANISMS = ("semantic_query", "dp_sgd")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_hash(value: object, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise PrivacyError(f"{name} must be a {'' if allow_empty else 'non-empty '}string, got {value!r}")
    return value


def _check_generator(value: object, *, allow_unspecified: bool) -> str:
    allowed = GENERATOR_NAMES + ((UNSPECIFIED_GENERATOR,) if allow_unspecified else ())
    if value not in allowed:
        raise PrivacyError(f"generator must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


class PrivacyLedger:
    """Mechanisms applied to one sensitive dataset in one run, and the epsilon they spend.

    Args:
        delta: the run's target delta; must be below 1/num_examples.
        dataset_hash: content hash of the sensitive training set (``ImageDataset.content_hash``).
        num_examples: N, the number of sensitive examples.
        config_hash: hash of the run's config; checked when the ledger is loaded.
    """

    def __init__(self, *, delta: float, dataset_hash: str, num_examples: int, config_hash: str = "") -> None:
        self.num_examples = check_num_examples(num_examples)
        self.delta = check_delta(delta, num_examples=self.num_examples)
        self.dataset_hash = _check_hash(dataset_hash, "dataset_hash")
        self.config_hash = _check_hash(config_hash, "config_hash", allow_empty=True)
        self._entries: list[dict[str, Any]] = []
        # Parameters of the last entry when it is a DP-SGD run, for the cheap merge path.
        self._open_dpsgd_key: tuple[float, float, str] | None = None

    # ------------------------------------------------------------------ recording

    def record_semantic_query(self, *, query_noise_multiplier: float, k: int, generator: str) -> None:
        """Record one semantic query (paper Theorem 3.1): Gaussian noise std z * sqrt(k), sensitivity sqrt(k).

        Args:
            query_noise_multiplier: z.
            k: semantics per sensitive image.
            generator: ``"secure"`` or ``"os-entropy"`` (`privimage.privacy.generator_name`).
        """
        z = check_positive(query_noise_multiplier, "query_noise_multiplier")
        k = check_k(k)
        self._entries.append({
            "mechanism": "semantic_query",
            "query_noise_multiplier": z,
            "k": k,
            "l2_sensitivity": math.sqrt(k),
            "noise_std": z * math.sqrt(k),
            "generator": _check_generator(generator, allow_unspecified=False),
            "neighbouring": NEIGHBOURING,
            "dataset_hash": self.dataset_hash,
            "time": _now(),
        })
        self._open_dpsgd_key = None

    def record_dpsgd_steps(
        self, *, noise_multiplier: float, sample_rate: float, steps: int = 1, generator: str | None = None
    ) -> None:
        """Record DP-SGD steps (Poisson-subsampled Gaussian); called by the training loop every step.

        Steps with the same parameters as the previous entry add to its step count.

        Args:
            noise_multiplier: sigma; the noise std is sigma * C on the clipped sum.
            sample_rate: Poisson sampling rate q.
            steps: number of steps taken with these parameters.
            generator: ``"secure"`` or ``"os-entropy"``; None records ``"unspecified"``.
        """
        generator = UNSPECIFIED_GENERATOR if generator is None else generator
        key = (noise_multiplier, sample_rate, generator)
        # Fast path: same parameters as the open entry (already validated), a plain int count.
        if key == self._open_dpsgd_key and type(steps) is int and steps >= 0:
            entry = self._entries[-1]
            entry["steps"] += steps
            entry["last_step_time"] = _now()
            return
        sigma = check_positive(noise_multiplier, "noise_multiplier")
        q = check_sample_rate(sample_rate)
        steps = check_steps(steps)
        generator = _check_generator(generator, allow_unspecified=True)
        now = _now()
        self._entries.append({
            "mechanism": "dp_sgd",
            "noise_multiplier": sigma,
            "sample_rate": q,
            "steps": steps,
            "generator": generator,
            "neighbouring": NEIGHBOURING,
            "dataset_hash": self.dataset_hash,
            "time": now,
            "last_step_time": now,
        })
        self._open_dpsgd_key = (sigma, q, generator)

    def merge(self, other: "PrivacyLedger") -> None:
        """Append another ledger's entries (e.g. a cached semantic query reused by this run).

        Args:
            other: a ledger of the same sensitive dataset.
        """
        if other.dataset_hash != self.dataset_hash:
            raise PrivacyError("cannot merge ledgers of different sensitive datasets (dataset hash mismatch)")
        for entry in other._entries:
            self._entries.append(copy.deepcopy(entry))
        self._open_dpsgd_key = None

    # ------------------------------------------------------------------ accounting

    @property
    def entries(self) -> list[dict[str, Any]]:
        """A copy of the entries, oldest first."""
        return copy.deepcopy(self._entries)

    def epsilon(self, *, accountant: str = "rdp") -> float:
        """Epsilon of the whole ledger at ``self.delta`` (paper Theorem E.2).

        Args:
            accountant: ``"rdp"`` (opacus RDP analysis) or ``"prv"`` (cross-check).

        Returns:
            Epsilon; 0.0 for an empty ledger.
        """
        runs = [
            (e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in self._entries if e["mechanism"] == "dp_sgd"
        ]
        queries = [e["query_noise_multiplier"] for e in self._entries if e["mechanism"] == "semantic_query"]
        return composition_epsilon(dpsgd_runs=runs, query_noise_multipliers=queries, delta=self.delta, accountant=accountant)

    def prv_cross_check(self) -> tuple[float | None, str | None]:
        """The PRV accountant's epsilon, or None and the reason where it cannot size its grid.

        RDP is the account the guarantee rests on; PRV only cross-checks it. A
        composition whose PRV grid would exhaust memory (a huge epsilon, very many
        steps) is refused in fixed time by `composition_epsilon`; a finished run
        records that instead of losing its outputs to a refused cross-check.

        Returns:
            ``(epsilon_prv, None)``, or ``(None, reason)``.
        """
        try:
            return self.epsilon(accountant="prv"), None
        except PrivacyError as exc:
            return None, str(exc).splitlines()[0]

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; ``epsilon_rdp`` is a derived summary, recomputed on load."""
        return {
            "format": LEDGER_FORMAT,
            "version": LEDGER_VERSION,
            "delta": self.delta,
            "dataset_hash": self.dataset_hash,
            "num_examples": self.num_examples,
            "config_hash": self.config_hash,
            "neighbouring": NEIGHBOURING,
            "entries": self.entries,
            "epsilon_rdp": self.epsilon(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PrivacyLedger":
        """Rebuild a ledger from `to_dict` output, validating every field."""
        if not isinstance(data, Mapping) or data.get("format") != LEDGER_FORMAT:
            raise PrivacyError("not a privacy ledger (missing or wrong 'format')")
        if data.get("version") != LEDGER_VERSION:
            raise PrivacyError(f"unsupported ledger version {data.get('version')!r} (expected {LEDGER_VERSION})")
        if data.get("neighbouring") != NEIGHBOURING:
            raise PrivacyError(f"unsupported neighbouring relation {data.get('neighbouring')!r}")
        try:
            ledger = cls(
                delta=data["delta"],
                dataset_hash=data["dataset_hash"],
                num_examples=data["num_examples"],
                config_hash=data.get("config_hash", ""),
            )
            entries = data["entries"]
        except KeyError as exc:
            raise PrivacyError(f"ledger is missing the field {exc.args[0]!r}") from None
        if not isinstance(entries, list):
            raise PrivacyError("ledger 'entries' must be a list")
        for index, entry in enumerate(entries):
            ledger._entries.append(_validated_entry(entry, index, ledger.dataset_hash))
        return ledger

    def save(self, path: Path | str) -> None:
        """Write the ledger as JSON, atomically (no half-written ledger on a crash)."""
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        expect_dataset_hash: str | None = None,
        expect_config_hash: str | None = None,
    ) -> "PrivacyLedger":
        """Read a saved ledger and check that it belongs to this run.

        Args:
            path: the ledger's JSON file.
            expect_dataset_hash: the run's sensitive dataset hash; a different one is an error.
            expect_config_hash: the run's config hash; a different one is an error.

        Returns:
            The `PrivacyLedger`.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PrivacyError(f"privacy ledger not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PrivacyError(f"{path}: unreadable privacy ledger ({exc.__class__.__name__})") from None
        ledger = cls.from_dict(data)
        if expect_dataset_hash is not None and ledger.dataset_hash != expect_dataset_hash:
            raise PrivacyError(
                f"{path}: ledger is for sensitive dataset {ledger.dataset_hash[:12]}, not this run's {expect_dataset_hash[:12]}"
            )
        if expect_config_hash is not None and ledger.config_hash != expect_config_hash:
            raise PrivacyError(
                f"{path}: ledger is for config {ledger.config_hash or '(none)'}, not this run's {expect_config_hash}"
            )
        return ledger

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger(entries={len(self._entries)}, delta={self.delta:g}, "
            f"dataset_hash={self.dataset_hash[:12]!r}, num_examples={self.num_examples})"
        )


def _validated_entry(entry: object, index: int, dataset_hash: str) -> dict[str, Any]:
    """One loaded entry, checked as strictly as when it was recorded."""
    where = f"ledger entry {index}"
    if not isinstance(entry, Mapping):
        raise PrivacyError(f"{where} must be a mapping")
    mechanism = entry.get("mechanism")
    if mechanism not in MECHANISMS:
        raise PrivacyError(f"{where}: unknown mechanism {mechanism!r} (known: {', '.join(MECHANISMS)})")
    if entry.get("dataset_hash") != dataset_hash:
        raise PrivacyError(f"{where} names another sensitive dataset than its ledger")
    if entry.get("neighbouring") != NEIGHBOURING:
        raise PrivacyError(f"{where}: unsupported neighbouring relation {entry.get('neighbouring')!r}")
    try:
        if mechanism == "semantic_query":
            z = check_positive(entry["query_noise_multiplier"], "query_noise_multiplier")
            k = check_k(entry["k"])
            _check_generator(entry["generator"], allow_unspecified=False)
            # The recorded noise must be the one Theorem 3.1 assumes.
            if not math.isclose(entry["noise_std"], z * math.sqrt(k), rel_tol=1e-12):
                raise PrivacyError(f"{where}: noise_std {entry['noise_std']!r} is not z * sqrt(k)")
        else:
            check_positive(entry["noise_multiplier"], "noise_multiplier")
            check_sample_rate(entry["sample_rate"])
            check_steps(entry["steps"])
            _check_generator(entry["generator"], allow_unspecified=True)
        _check_hash(entry["time"], "time")
    except KeyError as exc:
        raise PrivacyError(f"{where} is missing the field {exc.args[0]!r}") from None
    except TypeError:
        raise PrivacyError(f"{where}: a field has the wrong type") from None
    return copy.deepcopy(dict(entry))
