"""The verdict logic of ``tab_claims`` on small fixed tables (privimage.claims)."""

import math

import pandas as pd
import pytest

from privimage import claims
from privimage.claims import DOES_NOT_HOLD, HOLDS, NOT_EXERCISED, WITHIN_SPREAD


def runs(rows):
    """A ``tab_rq1_runs`` stand-in: (method, epsilon, seed, fid, ca) with the same CA for the three classifiers."""
    return pd.DataFrame([{"method": m, "epsilon": e, "seed": s, "status": "ok", "fid": fid,
                          "ca_lr": ca, "ca_mlp": ca, "ca_cnn": ca} for m, e, s, fid, ca in rows])


def by_claim(frame):
    return frame.set_index("claim")


@pytest.mark.parametrize(("margin", "spread", "expected"), [
    (5.0, 1.0, HOLDS), (-5.0, 1.0, DOES_NOT_HOLD), (0.5, 1.0, WITHIN_SPREAD), (-0.5, 1.0, WITHIN_SPREAD),
    (0.1, math.nan, HOLDS), (-0.1, math.nan, DOES_NOT_HOLD), (math.nan, 1.0, NOT_EXERCISED),
])
def test_verdict_compares_the_difference_with_the_spread(margin, spread, expected):
    assert claims.verdict(margin, spread)[0] == expected


def test_combined_spread_is_the_root_sum_of_squares_and_missing_when_a_std_is():
    assert claims.combined_spread(3.0, 4.0) == pytest.approx(5.0)
    assert math.isnan(claims.combined_spread(3.0, math.nan))


def test_rq1_claims_hold_fail_and_fall_within_the_spread_on_fixed_tables():
    table = runs([
        # epsilon 1: Privimage+D far ahead of both baselines on FID and CA -> holds.
        ("privimage-d", 1, 0, 100, 0.60), ("privimage-d", 1, 1, 110, 0.62),
        ("pdp-diffusion", 1, 0, 300, 0.20), ("pdp-diffusion", 1, 1, 310, 0.22),
        ("dpdm", 1, 0, 500, 0.10), ("dpdm", 1, 1, 520, 0.12),
        # epsilon 10: a baseline far ahead -> does not hold; CA within the seed spread.
        ("privimage-d", 10, 0, 400, 0.30), ("privimage-d", 10, 1, 420, 0.50),
        ("pdp-diffusion", 10, 0, 100, 0.45), ("pdp-diffusion", 10, 1, 105, 0.25),
    ])
    result = by_claim(pd.DataFrame([c.__dict__ for c in claims.rq1_claims(table)]))
    assert result.loc["RQ1 FID eps 1", "verdict"] == HOLDS
    assert result.loc["RQ1 average CA (%) eps 1", "verdict"] == HOLDS
    assert result.loc["RQ1 FID eps 10", "verdict"] == DOES_NOT_HOLD
    assert result.loc["RQ1 average CA (%) eps 10", "verdict"] == WITHIN_SPREAD
    # The best baseline is the one compared with, and the numbers are in the row.
    assert "pdp-diffusion" in result.loc["RQ1 FID eps 1", "measured"]
    assert result.loc["RQ1 FID eps 1", "margin"] == pytest.approx(305 - 105)


def test_one_seed_rows_are_decided_by_the_sign_and_say_so():
    pretrained = pd.DataFrame([{"method": "privimage-d", "fid": 500.0, "status": "ok"},
                               {"method": "pdp-diffusion", "fid": 800.0, "status": "ok"},
                               {"method": "privimage-g", "fid": 900.0, "status": "ok"},
                               {"method": "dpgan-p", "fid": 700.0, "status": "ok"}])
    result = by_claim(pd.DataFrame([c.__dict__ for c in claims.rq2_claims(pretrained, None)]))
    assert result.loc["RQ2 pre-trained FID (diffusion)", "verdict"] == HOLDS
    assert result.loc["RQ2 pre-trained FID (GAN)", "verdict"] == DOES_NOT_HOLD
    assert "1 seed" in result.loc["RQ2 pre-trained FID (GAN)", "reason"]
    assert result.loc["RQ2 SDS", "verdict"] == NOT_EXERCISED


def test_missing_tables_are_not_exercised_with_the_reason():
    result = claims.claims_table({})
    assert set(result["verdict"]) == {NOT_EXERCISED}
    assert (result["reason"].str.len() > 0).all()


def test_threshold_claims_compare_with_the_papers_figures():
    resources = pd.DataFrame({"stage": ["pretraining", "finetuning"],
                              "pdp-diffusion_time_s": [100.0, 100.0], "privimage-d_time_s": [40.0, 80.0],
                              "pdp-diffusion_memory_mb": [1000.0, 2000.0], "privimage-d_memory_mb": [500.0, 600.0]})
    result = by_claim(pd.DataFrame([c.__dict__ for c in claims.table4_claims(resources)]))
    assert result.loc["Table 4 time", "verdict"] == DOES_NOT_HOLD  # 120 / 200 = 0.6 > the paper's 0.52
    assert result.loc["Table 4 memory", "verdict"] == HOLDS  # 600 / 2000 = 0.3 <= 0.50
    nonprivate = pd.DataFrame([{"method": "nonpriv-d", "status": "ok", "ca_lr": 0.8, "ca_mlp": 0.8, "ca_cnn": 0.8},
                               {"method": "privimage-d", "status": "ok", "ca_lr": 0.77, "ca_mlp": 0.77, "ca_cnn": 0.77}])
    assert claims.table3_claim(nonprivate)[0].verdict == HOLDS  # 3 points below, within the paper's 6.5


def test_write_claims_writes_csv_and_markdown_from_the_tables_folder(tmp_path):
    runs([("privimage-d", 10, 0, 100, 0.6), ("dpdm", 10, 0, 900, 0.1)]).to_csv(tmp_path / "tab_rq1_runs.csv",
                                                                                 index=False)
    written = claims.write_claims(tmp_path)
    assert (tmp_path / "tab_claims.csv").is_file() and (tmp_path / "tab_claims.md").is_file()
    assert by_claim(written).loc["RQ1 FID eps 10", "verdict"] == HOLDS
    assert by_claim(pd.read_csv(tmp_path / "tab_claims.csv")).loc["RQ2 SDS", "verdict"] == NOT_EXERCISED
