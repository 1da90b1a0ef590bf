"""The paper's claims, checked against the result tables of one run (``tab_claims``).

The last step of ``./run_all.sh`` reads the tables the notebooks wrote and, for
each claim of the paper that the profile exercises, writes the paper's
statement, the measured numbers it rests on, their seed spread and a verdict
computed here, never typed:

- ``holds``: the measured difference points the claim's way by more than the spread;
- ``does not hold``: it points the other way by more than the spread;
- ``within spread``: its size is within the spread, either way;
- ``not exercised``: the table it needs is missing or empty (the reason says which).

The spread of a difference of two means is ``sqrt(std_a**2 + std_b**2)`` of
their seed standard deviations. A row from a single seed has no spread: its
verdict follows the sign of the difference alone, and its reason says so.
Threshold claims (Table 3, Table 4) compare with the paper's own figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from privimage.tables import write_table

HOLDS, DOES_NOT_HOLD, WITHIN_SPREAD, NOT_EXERCISED = "holds", "does not hold", "within spread", "not exercised"
CA_METRICS = ("ca_lr", "ca_mlp", "ca_cnn")
PRIVIMAGE = "privimage-d"
# Table 2's baselines (paper Sec. 5.1); Privimage+G is the method's own GAN variant, not a baseline.
BASELINES = ("pdp-diffusion", "dpdm", "dpgan", "dpgan-p")


@dataclass(frozen=True)
class Claim:
    """One row of ``tab_claims``: what the paper says and what this run measured."""

    claim: str
    paper: str
    statement: str
    measured: str
    margin: float
    spread: float
    verdict: str
    reason: str = ""


ONE_SEED = "1 seed: decided by the sign, no spread measured"


def verdict(margin: float, spread: float, *, no_spread: str = ONE_SEED) -> tuple[str, str]:
    """The verdict for a difference ``margin`` (positive: the claim's way) and its ``spread``.

    A nan spread (one seed, or a threshold from the paper) decides by the sign and gives ``no_spread`` as the reason.
    """
    if margin is None or math.isnan(margin):
        return NOT_EXERCISED, "no measurement"
    if spread is None or math.isnan(spread) or spread == 0:
        return (HOLDS if margin > 0 else DOES_NOT_HOLD), no_spread
    if margin > spread:
        return HOLDS, ""
    if margin < -spread:
        return DOES_NOT_HOLD, ""
    return WITHIN_SPREAD, f"|difference| {abs(margin):.3g} <= spread {spread:.3g}"


def combined_spread(*stds: float) -> float:
    """The seed spread of a difference of means: the root sum of squares of their stds (nan if any is missing)."""
    return math.sqrt(sum(s * s for s in stds)) if stds and all(not math.isnan(s) for s in stds) else math.nan


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if not len(values):
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _std(row: pd.Series, metric: str) -> float:
    value = row.get(f"{metric}_std", math.nan)
    return float(value) if pd.notna(value) else math.nan


def _fmt(mean: float, std: float = math.nan) -> str:
    return f"{mean:.3g}" if math.isnan(std) else f"{mean:.3g} ± {std:.3g}"


def _claim(claim: str, paper: str, statement: str, measured: str, margin: float, spread: float,
           note: str = "", no_spread: str = ONE_SEED) -> Claim:
    """A `Claim` whose verdict is computed from ``margin`` (signed the claim's way) and ``spread``."""
    result, reason = verdict(margin, spread, no_spread=no_spread)
    return Claim(claim, paper, statement, measured, margin, spread, result, "; ".join(r for r in (note, reason) if r))


def not_exercised(claim: str, paper: str, statement: str, reason: str) -> Claim:
    """A claim the run's tables cannot speak to, with the reason."""
    return Claim(claim, paper, statement, "", math.nan, math.nan, NOT_EXERCISED, reason)


def _ok(table: pd.DataFrame | None) -> pd.DataFrame | None:
    if table is None or "status" not in table:
        return table
    done = table[table["status"] == "ok"]
    return done if len(done) else None


def _with_ca_average(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``ca_mean``: the mean of the three classifiers' accuracies in % (the paper's "average CA")."""
    frame = frame.copy()
    frame["ca_mean"] = 100 * frame[list(CA_METRICS)].apply(pd.to_numeric, errors="coerce").mean(axis=1)
    return frame


def rq1_claims(runs: pd.DataFrame | None) -> list[Claim]:
    """Table 2: Privimage+D beats every baseline in FID and CA at each epsilon, and PDP-Diffusion on average."""
    paper = "Sec. 5.2 RQ1, Table 2"
    runs = _ok(runs)
    if runs is None or PRIVIMAGE not in set(runs["method"]):
        return [not_exercised("RQ1", paper, "Privimage+D outperforms all baselines", "tab_rq1_runs has no "
                              "finished Privimage+D run")]
    runs = _with_ca_average(runs)
    claims = []
    per_method = {(m, e): g for (m, e), g in runs.groupby(["method", "epsilon"])}
    epsilons = sorted(runs.loc[runs["method"] == PRIVIMAGE, "epsilon"].unique())
    for metric, label, lower in (("fid", "FID", True), ("ca_mean", "average CA (%)", False)):
        relative = []
        for epsilon in epsilons:
            ours = _mean_std(per_method[(PRIVIMAGE, epsilon)][metric])
            rivals = {m: _mean_std(per_method[(m, epsilon)][metric]) for m in BASELINES if (m, epsilon) in per_method}
            statement = f"at epsilon {epsilon:g}, Privimage+D's {label} is {'below' if lower else 'above'} every baseline's"
            if not rivals:
                claims.append(not_exercised(f"RQ1 {label} eps {epsilon:g}", paper, statement, "no baseline ran"))
                continue
            best = (min if lower else max)(rivals, key=lambda m: rivals[m][0])
            margin = (rivals[best][0] - ours[0]) if lower else (ours[0] - rivals[best][0])
            measured = f"Privimage+D {_fmt(*ours)}; best baseline {best} {_fmt(*rivals[best])}"
            claims.append(_claim(f"RQ1 {label} eps {epsilon:g}", paper, statement, measured, margin,
                                 combined_spread(ours[1], rivals[best][1])))
            if "pdp-diffusion" in rivals:
                relative.append((ours, rivals["pdp-diffusion"]))
        # The abstract's averages: 30.1% lower FID and 12.6% higher CA than PDP-Diffusion.
        if relative:
            ours_mean = sum(o[0] for o, _ in relative) / len(relative)
            pdp_mean = sum(p[0] for _, p in relative) / len(relative)
            margin = (pdp_mean - ours_mean) if lower else (ours_mean - pdp_mean)
            spread = sum(combined_spread(o[1], p[1]) for o, p in relative) / len(relative)
            change = 100 * (ours_mean - pdp_mean) / pdp_mean
            claims.append(_claim(
                f"RQ1 {label} vs PDP-Diffusion", "abstract, Sec. 5.2 RQ1",
                f"on average over epsilons, Privimage+D's {label} is {'lower' if lower else 'higher'} than "
                f"PDP-Diffusion's (paper: {'30.1% lower' if lower else '12.6% higher'})",
                f"Privimage+D {ours_mean:.3g}, PDP-Diffusion {pdp_mean:.3g} ({change:+.1f}%)", margin, spread))
    return claims


def rq2_claims(pretrained: pd.DataFrame | None, sds: pd.DataFrame | None) -> list[Claim]:
    """Fig. 6: pre-training on the selection gives a lower FID before fine-tuning, and the selection a higher SDS."""
    paper = "Sec. 5.2 RQ2, Fig. 6"
    claims = []
    pretrained = _ok(pretrained)
    for ours, theirs, label in ((PRIVIMAGE, "pdp-diffusion", "diffusion"), ("privimage-g", "dpgan-p", "GAN")):
        statement = (f"pre-trained only, the {label} on the selected public data has a lower FID than the same "
                     f"generator on all public data ({ours} vs {theirs})")
        rows = None if pretrained is None else pretrained.set_index("method")
        if rows is None or ours not in rows.index or theirs not in rows.index:
            claims.append(not_exercised(f"RQ2 pre-trained FID ({label})", paper, statement,
                                        "tab_rq2_pretrained_fid lacks one of the two rows"))
            continue
        a, b = rows.loc[ours], rows.loc[theirs]
        change = 100 * (a["fid"] - b["fid"]) / b["fid"]
        claims.append(_claim(f"RQ2 pre-trained FID ({label})", paper, statement,
                             f"{ours} {_fmt(a['fid'], _std(a, 'fid'))}; {theirs} {_fmt(b['fid'], _std(b, 'fid'))} "
                             f"({change:+.1f}%)",
                             float(b["fid"] - a["fid"]), combined_spread(_std(a, "fid"), _std(b, "fid"))))
    statement = "at every selection ratio, the selection's SDS to the sensitive data is above the whole public data's"
    sds = _ok(sds)
    if sds is None or not (sds["subset"] == "all public").any() or not (sds["subset"] == "selected").any():
        claims.append(not_exercised("RQ2 SDS", paper, statement, "tab_rq2_sds lacks the whole-public or selected rows"))
        return claims
    whole = sds[sds["subset"] == "all public"].iloc[0]
    selected = sds[sds["subset"] == "selected"]
    # The claim is for every ratio: the ratio with the smallest lead decides it.
    worst = selected.loc[(selected["sds"] - whole["sds"]).idxmin()]
    claims.append(_claim("RQ2 SDS", paper, statement,
                         f"smallest lead at ratio {worst['selection_ratio']:g}: selected "
                         f"{_fmt(worst['sds'], _std(worst, 'sds'))}, all public {_fmt(whole['sds'], _std(whole, 'sds'))}",
                         float(worst["sds"] - whole["sds"]), combined_spread(_std(worst, "sds"), _std(whole, "sds"))))
    return claims


def _sweep_claims(table: pd.DataFrame | None, *, key: str, name: str, paper: str, pick, statement: str,
                  missing: str) -> list[Claim]:
    """FID and average CA of one row of a sweep against another.

    ``pick(table, metric, lower)`` returns ``(ours, theirs, (ours_label, theirs_label))``, the two rows
    the claim compares on that metric (``lower``: lower is better), or None when the table cannot say.
    """
    table = _ok(table)
    claims = []
    for metric, label, lower in (("fid", "FID", True), ("ca_mean", "average CA (%)", False)):
        picked = pick(_with_ca_average(table), metric, lower) if table is not None else None
        if picked is None:
            claims.append(not_exercised(f"{name} {label}", paper, statement.format(metric=label), missing))
            continue
        ours, theirs, (ours_label, theirs_label) = picked
        a, b = float(ours[metric]), float(theirs[metric])
        claims.append(_claim(f"{name} {label}", paper, statement.format(metric=label),
                             f"{key} {ours_label}: {a:.3g}; {key} {theirs_label}: {b:.3g}",
                             (b - a) if lower else (a - b), math.nan))
    return claims


def _worst(rows: pd.DataFrame, metric: str, lower: bool) -> pd.Series:
    values = pd.to_numeric(rows[metric])
    return rows.loc[values.idxmax() if lower else values.idxmin()]


def _best(rows: pd.DataFrame, metric: str, lower: bool) -> pd.Series:
    return _worst(rows, metric, not lower)


def rq3_claims(ratios: pd.DataFrame | None, sizes: pd.DataFrame | None) -> list[Claim]:
    """Fig. 7: ratios below 50% beat the whole public data; larger models (below 15M) synthesise better."""
    paper = "Sec. 5.2 RQ3, Fig. 7"

    def weakest_small_ratio(table, metric, lower):
        # "Across all selection ratios below 50%": the weakest of them on this metric against 100%.
        small, whole = table[table["selection_ratio"] < 0.5], table[table["selection_ratio"] == 1.0]
        if not len(small) or not len(whole):
            return None
        worst = _worst(small, metric, lower)
        return worst, whole.iloc[0], (f"{worst['selection_ratio']:g} (the weakest below 50%)", "1")

    def largest_against_smallest(table, metric, lower):
        table = table.sort_values("num_parameters")
        if len(table) < 2:
            return None
        return table.iloc[-1], table.iloc[0], (table.iloc[-1]["model_size"], table.iloc[0]["model_size"])

    return (_sweep_claims(ratios, key="ratio", name="RQ3 ratio", paper=paper, pick=weakest_small_ratio,
                          statement="every selection ratio below 50% gives a better {metric} than the whole "
                                    "public data (ratio 100%)",
                          missing="tab_rq3_selection_ratio lacks ratios below 50% or the 100% row")
            + _sweep_claims(sizes, key="size", name="RQ3 size", paper=paper, pick=largest_against_smallest,
                            statement="below 15M parameters, the larger Privimage+D model gives the better {metric}",
                            missing="tab_rq3_model_size has fewer than two sizes"))


def table3_claim(nonprivate: pd.DataFrame | None) -> list[Claim]:
    """Table 3: DP costs Privimage+D little average CA against its non-private counterpart (paper: 6.5 points)."""
    paper, paper_drop = "Sec. 6.1, Table 3", 6.5
    statement = (f"Privimage+D's average CA is at most {paper_drop:g} points below NonPriv+D's "
                 f"(the paper's drop; CA in %)")
    table = _ok(nonprivate)
    if table is None or not {PRIVIMAGE, "nonpriv-d"} <= set(table["method"]):
        return [not_exercised("Table 3", paper, statement, "tab_sec61_nonprivate lacks privimage-d or nonpriv-d")]
    table = _with_ca_average(table).set_index("method")
    ours, theirs = table.loc[PRIVIMAGE, "ca_mean"], table.loc["nonpriv-d", "ca_mean"]
    drop = float(theirs - ours)
    return [_claim("Table 3", paper, statement, f"Privimage+D {ours:.3g}, NonPriv+D {theirs:.3g}: "
                   f"{drop:.3g} points below", paper_drop - drop, math.nan,
                   no_spread="1 seed, against the paper's figure")]


def table4_claims(resources: pd.DataFrame | None) -> list[Claim]:
    """Table 4: Privimage+D needs about half of PDP-Diffusion's time (0.52) and memory (0.50), or less."""
    paper = "Sec. 6.2, Table 4"
    claims = []
    needed = {"pdp-diffusion_time_s", "privimage-d_time_s", "pdp-diffusion_memory_mb", "privimage-d_memory_mb"}
    for label, paper_ratio in (("time", 0.52), ("memory", 0.50)):
        statement = f"Privimage+D's {'total time' if label == 'time' else 'peak memory'} is at most {paper_ratio:g} of PDP-Diffusion's (the paper's ratio)"
        if resources is None or not needed <= set(resources.columns) or not len(resources):
            claims.append(not_exercised(f"Table 4 {label}", paper, statement, "tab_sec62_resources is missing"))
            continue
        column = "time_s" if label == "time" else "memory_mb"
        total = (lambda s: float(s.sum())) if label == "time" else (lambda s: float(s.max()))
        ours = total(pd.to_numeric(resources[f"privimage-d_{column}"], errors="coerce").fillna(0))
        theirs = total(pd.to_numeric(resources[f"pdp-diffusion_{column}"], errors="coerce").fillna(0))
        ratio = ours / theirs if theirs else math.nan
        how = "; ".join(sorted(set(str(h) for h in resources.get("how", []) if isinstance(h, str))))
        claims.append(_claim(f"Table 4 {label}", paper, statement,
                             f"ratio {ratio:.3g} ({'sum' if label == 'time' else 'peak'} over stages)",
                             paper_ratio - ratio, math.nan, note="projected from timed steps" if "projected" in how else "",
                             no_spread="against the paper's figure"))
    return claims


def appendix_b_claims(sizes: pd.DataFrame | None) -> list[Claim]:
    """Appendix B: the largest DP diffusion model is no better than the best smaller one (over-parameterisation)."""
    paper = "Appendix B, Fig. 8"

    def best_smaller_against_largest(table, metric, lower):
        # The claim's direction: the best smaller model beats the largest.
        table = table.sort_values("num_parameters")
        if len(table) < 2:
            return None
        best, largest = _best(table.iloc[:-1], metric, lower), table.iloc[-1]
        return best, largest, (f"{best['model_size']} (the best smaller)", f"{largest['model_size']} (the largest)")

    return _sweep_claims(sizes, key="size", name="Appendix B", paper=paper, pick=best_smaller_against_largest,
                         statement="under DP-SGD the largest model does not beat the best smaller one in {metric}",
                         missing="tab_appb_overparameterization has fewer than two sizes")


def claims_table(tables: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """Every claim, checked against ``tables`` (table stem -> its CSV as a DataFrame, or None when missing)."""
    get = tables.get
    claims = (rq1_claims(get("tab_rq1_runs"))
              + rq2_claims(get("tab_rq2_pretrained_fid"), get("tab_rq2_sds"))
              + rq3_claims(get("tab_rq3_selection_ratio"), get("tab_rq3_model_size"))
              + table3_claim(get("tab_sec61_nonprivate"))
              + table4_claims(get("tab_sec62_resources"))
              + appendix_b_claims(get("tab_appb_overparameterization")))
    return pd.DataFrame([claim.__dict__ for claim in claims])


TABLES = ("tab_rq1_runs", "tab_rq2_pretrained_fid", "tab_rq2_sds", "tab_rq3_selection_ratio", "tab_rq3_model_size",
          "tab_sec61_nonprivate", "tab_sec62_resources", "tab_appb_overparameterization")


def write_claims(tables_dir: Path) -> pd.DataFrame:
    """Read the run's tables from ``tables_dir`` and write ``tab_claims.csv`` and ``tab_claims.md`` beside them."""
    tables_dir = Path(tables_dir)
    tables = {name: pd.read_csv(tables_dir / f"{name}.csv") if (tables_dir / f"{name}.csv").is_file() else None
              for name in TABLES}
    claims = claims_table(tables)
    counts = claims["verdict"].value_counts()
    write_table(frame=claims, name="tab_claims", directory=tables_dir,
                title="The paper's claims against this run's tables",
                notes=["Verdicts are computed by privimage.claims from the tables beside this one: holds / does not "
                       "hold (the difference exceeds the seed spread, either way), within spread, not exercised.",
                       "Spread: the root sum of squares of the two seed standard deviations; one-seed rows have "
                       "none and are decided by the sign of the difference.",
                       "CA: the mean of the LR, MLP and CNN accuracies, in %.",
                       "Tally: " + ", ".join(f"{verdict} {counts.get(verdict, 0)}" for verdict in
                                             (HOLDS, WITHIN_SPREAD, DOES_NOT_HOLD, NOT_EXERCISED))],
                display=claims[["claim", "paper", "statement", "measured", "verdict", "reason"]])
    return claims
