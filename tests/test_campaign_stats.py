"""Campaign statistics and report rendering: independent checks, CI coverage, bootstrap, rendering.

Pure functions only: no Postgres, Redis or workers.
"""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.stats import binomtest, norm
from statsmodels.stats.contingency_tables import mcnemar

from shared.campaigns import stats
from shared.campaigns.render import render_markdown, render_svg
from shared.campaigns.report import ExcludedPair, PairOutcome, ReportMeta, Tokens, build_report

SVG = "{http://www.w3.org/2000/svg}"
META = ReportMeta(7, "retry-bump", "rerun", "source runs as recorded", "re-run with max_attempts=3", 1)


def tokens(total: int) -> Tokens:
    inp, out, read = total // 2, total // 4, total // 8
    return Tokens(input=inp, output=out, cache_read=read, cache_write=total - inp - out - read)


def pair(
    source: int,
    a_ok: bool,
    b_ok: bool,
    *,
    sample: int = 0,
    a_tok: int = 1000,
    b_tok: int = 1000,
    a_cost: str = "0.010000",
    b_cost: str = "0.010000",
) -> PairOutcome:
    return PairOutcome(
        source_run_id=source,
        sample=sample,
        a_run_id=10_000 + 2 * source + 100_000 * sample,
        b_run_id=10_001 + 2 * source + 100_000 * sample,
        a_success=a_ok,
        b_success=b_ok,
        a_attempts=1,
        b_attempts=2,
        a_tokens=tokens(a_tok),
        b_tokens=tokens(b_tok),
        a_cost_usd=Decimal(a_cost),
        b_cost_usd=Decimal(b_cost),
        a_wall_s=10.0,
        b_wall_s=None if source % 2 else 20.0,
    )


def table_pairs(both: int, a_only: int, b_only: int, neither: int) -> list[PairOutcome]:
    kinds = [(True, True)] * both + [(True, False)] * a_only + [(False, True)] * b_only
    kinds += [(False, False)] * neither
    return [pair(i, a, b) for i, (a, b) in enumerate(kinds)]


def report_of(pairs: list[PairOutcome], **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"seed": 1, "resamples": 2000} | kwargs
    return build_report(META, pairs, [], 0, **options)


# ---------------------------------------------------------------- McNemar, SE, CI against direct figures


@pytest.mark.parametrize(
    ("both", "a_only", "b_only", "neither"), [(30, 20, 8, 42), (5, 0, 9, 3), (50, 7, 7, 1)]
)
def test_mcnemar_matches_statsmodels_and_scipy(both: int, a_only: int, b_only: int, neither: int) -> None:
    mc = report_of(table_pairs(both, a_only, b_only, neither))["success"]["mcnemar"]
    expected = mcnemar([[both, a_only], [b_only, neither]], exact=True).pvalue
    by_scipy = binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue
    assert (mc["a_only"], mc["b_only"], mc["both"], mc["neither"]) == (a_only, b_only, both, neither)
    assert mc["p_value"] == pytest.approx(expected, rel=1e-12)
    assert mc["p_value"] == pytest.approx(by_scipy, rel=1e-12)


def test_mcnemar_b20_c8_and_no_discordance() -> None:
    assert stats.mcnemar_exact([1] * 20 + [0] * 8, [0] * 20 + [1] * 8).p_value == pytest.approx(
        0.0357, abs=5e-4
    )
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1]) == stats.McNemar(0, 0, 1.0)


def test_paired_ci_matches_direct_computation() -> None:
    rng = np.random.default_rng(3)
    y_a, y_b = rng.random(150) < 0.5, rng.random(150) < 0.65
    success = report_of([pair(i, bool(a), bool(b)) for i, (a, b) in enumerate(zip(y_a, y_b, strict=True))])[
        "success"
    ]
    d = y_b.astype(float) - y_a.astype(float)
    se = np.sqrt(np.sum((d - d.mean()) ** 2) / (d.size - 1)) / np.sqrt(d.size)
    z = norm.ppf(0.975)
    assert success["se_method"] == "naive"
    assert success["delta"] == pytest.approx(d.mean())
    assert success["se"] == pytest.approx(se)
    assert success["ci95"] == pytest.approx([d.mean() - z * se, d.mean() + z * se])


def clustered_data(seed: int = 5, clusters: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, clusters)
    ids = np.repeat(np.arange(clusters) * 3 + 11, sizes)  # sparse, unordered-looking source ids
    y_a = rng.random(ids.size) < 0.4
    y_b = rng.random(ids.size) < 0.55
    return ids, y_a, y_b


def test_clustered_se_matches_a_loop_and_statsmodels() -> None:
    ids, y_a, y_b = clustered_data()
    d = y_b.astype(float) - y_a.astype(float)
    est = stats.paired_delta(y_a, y_b, stats.cluster_codes(ids))
    groups = sorted(set(ids.tolist()))
    total = 0.0
    for g in groups:
        total += sum(d[i] - d.mean() for i in range(d.size) if ids[i] == g) ** 2
    by_loop = np.sqrt(len(groups) / (len(groups) - 1) * total) / d.size
    # statsmodels' default small-sample factor is G/(G-1)*(N-1)/(N-K); with K=1 that is Miller's
    ols = sm.OLS(d, np.ones_like(d)).fit(cov_type="cluster", cov_kwds={"groups": ids})
    assert est.clustered and est.clusters == len(groups)
    assert est.se == pytest.approx(by_loop, rel=1e-12)
    assert est.se == pytest.approx(float(ols.bse[0]), rel=1e-9)
    assert est.ci95 == pytest.approx(
        (d.mean() - norm.ppf(0.975) * by_loop, d.mean() + norm.ppf(0.975) * by_loop)
    )


def test_clustered_formula_with_singletons_is_the_naive_se() -> None:
    rng = np.random.default_rng(8)
    d = rng.integers(-1, 2, 80).astype(float)
    assert stats.clustered_se(d, np.arange(80)) == pytest.approx(stats.naive_se(d), rel=1e-12)


def test_report_uses_clustered_se_with_repeats() -> None:
    ids, y_a, y_b = clustered_data()
    pairs = [
        pair(int(s), bool(a), bool(b), sample=i)
        for i, (s, a, b) in enumerate(zip(ids, y_a, y_b, strict=True))
    ]
    success = report_of(pairs)["success"]
    est = stats.paired_delta(y_a, y_b, stats.cluster_codes(ids))
    assert success["se_method"] == "clustered" and success["clusters"] == 40
    assert success["se"] == pytest.approx(est.se_clustered)
    assert est.se_clustered < est.se_naive  # independent outcomes: the ratio is noise below 1 ...
    assert success["mde"]["design_effect"] == 1.0  # ... and must not shrink the MDE


def test_mde_inflated_by_real_clustering() -> None:
    rng = np.random.default_rng(9)
    source_a, source_b = rng.random(30) < 0.5, rng.random(30) < 0.6
    pairs = [pair(s, bool(source_a[s]), bool(source_b[s]), sample=k) for s in range(30) for k in range(4)]
    success = report_of(pairs)["success"]
    ratio = success["se_clustered"] / success["se_naive"]
    assert ratio > 1.5  # four identical repeats per source: about sqrt(4) times the naive SE
    mde = success["mde"]
    plain = stats.minimum_detectable_effect(round(mde["discordance_rate"] * 120), 120)
    assert plain is not None
    assert mde["design_effect"] == pytest.approx(ratio) and mde["value"] == pytest.approx(plain * ratio)


# ---------------------------------------------------------------- MDE


def test_mde_field_check_twenty_percent_discordant_n620() -> None:
    report = report_of(table_pairs(both=250, a_only=62, b_only=62, neither=246), resamples=200)
    mde = report["success"]["mde"]
    assert mde["discordance_rate"] == pytest.approx(0.2)
    assert mde["value"] == pytest.approx(0.0503, abs=5e-4)
    assert "no detectable difference" in report["verdict"] and "MDE 5.0 pp" in report["verdict"]


def test_mde_scales_by_design_effect_and_is_absent_without_discordance() -> None:
    plain = stats.minimum_detectable_effect(40, 200)
    assert plain is not None
    assert stats.minimum_detectable_effect(40, 200, 1.5) == pytest.approx(1.5 * plain)
    assert stats.minimum_detectable_effect(0, 200) is None
    assert report_of(table_pairs(10, 0, 0, 10))["success"]["mde"]["value"] is None


# ---------------------------------------------------------------- coverage of the 95% CI


def coverage(
    clusters: int, repeats: int, *, source_sd: float, effect_sd: float, sets: int, seed: int
) -> tuple[float, float]:
    """Share of simulated data sets whose CI (clustered when repeats > 1, and naive) covers the true delta.

    Probit model: y = 1[alpha + u_source + v_source (arm B only) + e_pair + noise > 0], so each arm's
    marginal rate is Phi(alpha / scale) exactly, here 0.5 and 0.6: the true delta is 0.1.
    """
    rng = np.random.default_rng(seed)
    pair_sd = 1.0 if repeats == 1 else 0.5
    scale_a = np.sqrt(1 + source_sd**2 + pair_sd**2)
    alpha_b = np.sqrt(scale_a**2 + effect_sd**2) * norm.ppf(0.6)
    codes = np.repeat(np.arange(clusters), repeats)
    covered = naive_covered = 0
    for _ in range(sets):
        u = rng.normal(0, source_sd, clusters)[codes]
        v = rng.normal(0, effect_sd, clusters)[codes]
        e = rng.normal(0, pair_sd, codes.size)
        y_a = u + e + rng.normal(size=codes.size) > 0
        y_b = alpha_b + u + v + e + rng.normal(size=codes.size) > 0
        est = stats.paired_delta(y_a, y_b, codes)
        assert est.ci95 is not None and est.se_naive is not None
        covered += est.ci95[0] <= 0.1 <= est.ci95[1]
        naive_covered += abs(est.delta - 0.1) <= stats.Z_975 * est.se_naive
    return covered / sets, naive_covered / sets


def test_ci_coverage_unclustered() -> None:
    covered, _ = coverage(300, 1, source_sd=0.0, effect_sd=0.0, sets=2000, seed=11)
    print(f"\ncoverage, 300 independent pairs, p_A=0.5 p_B=0.6: {covered:.1%}")
    assert 0.93 <= covered <= 0.97


def test_ci_coverage_clustered() -> None:
    covered, naive = coverage(100, 3, source_sd=1.0, effect_sd=1.0, sets=2000, seed=12)
    print(f"\ncoverage, 100 sources x 3 repeats: clustered SE {covered:.1%}, naive SE {naive:.1%}")
    assert 0.93 <= covered <= 0.97
    assert naive < 0.93  # with these random effects ignoring the clusters would undercover


# ---------------------------------------------------------------- bootstrap


def cost_pairs(n: int, seed: int, *, repeats: int = 1) -> list[PairOutcome]:
    rng = np.random.default_rng(seed)
    a_tok = rng.integers(500, 5000, n)
    b_tok = a_tok + rng.integers(-300, 700, n)
    a_cost = rng.uniform(0.001, 0.5, n)
    b_cost = a_cost * rng.uniform(0.7, 1.6, n)
    ok_a, ok_b = rng.random(n) < 0.5, rng.random(n) < 0.6
    return [
        pair(
            i // repeats,
            bool(ok_a[i]),
            bool(ok_b[i]),
            sample=i % repeats,
            a_tok=int(a_tok[i]),
            b_tok=int(b_tok[i]),
            a_cost=f"{a_cost[i]:.6f}",
            b_cost=f"{b_cost[i]:.6f}",
        )
        for i in range(n)
    ]


def test_same_seed_same_report_whatever_the_pair_order() -> None:
    pairs = cost_pairs(300, 4, repeats=3)
    shuffled = [pairs[i] for i in np.random.default_rng(0).permutation(len(pairs))]
    first, again = report_of(pairs, seed=99), report_of(shuffled, seed=99)
    other = report_of(pairs, seed=100)
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
    assert first["deltas"]["tokens"]["mean_ci95"] != other["deltas"]["tokens"]["mean_ci95"]


def test_known_token_shift_gives_100() -> None:
    pairs = cost_pairs(200, 6)
    shifted = [
        pair(p.source_run_id, True, True, a_tok=p.a_tokens.total, b_tok=p.a_tokens.total + 100) for p in pairs
    ]
    tok = report_of(shifted)["deltas"]["tokens"]
    assert tok["mean"] == 100 and tok["median"] == 100
    assert tok["mean_ci95"] == [100, 100] and tok["median_ci95"] == [100, 100]


def test_shift_with_symmetric_noise_is_covered_and_not_degenerate() -> None:
    noise = np.random.default_rng(7).integers(-50, 51, 400)
    pairs = [pair(i, True, True, a_tok=1000, b_tok=1100 + int(x)) for i, x in enumerate(noise)]
    tok = report_of(pairs)["deltas"]["tokens"]
    for low, high in (tok["mean_ci95"], tok["median_ci95"]):
        assert low < 100 < high and high - low < 20


LAYOUTS = {
    "one pair per source": np.arange(60),
    "three repeats": np.arange(60) // 3,
    "unbalanced": np.repeat(np.arange(12), [1, 9, 2, 7, 3, 1, 8, 4, 5, 6, 11, 3]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bootstrap_matches_a_direct_resampling_loop(layout: str) -> None:
    codes = LAYOUTS[layout]
    rng = np.random.default_rng(21)
    values = np.stack([rng.normal(50, 30, 60).round(), rng.normal(0, 1, 60)], axis=1)  # column 0 has ties
    means, medians = stats.resample_statistics(values, codes, seed=5, resamples=300)
    n_clusters = int(codes.max()) + 1
    drawn = np.random.default_rng(np.random.SeedSequence(5).spawn(1)[0]).integers(
        0, n_clusters, (300, n_clusters), dtype=np.int32
    )
    if n_clusters == 60:  # the singleton path draws ranks of column 0, i.e. pairs in that sorted order
        drawn = np.argsort(values[:, 0], kind="stable")[drawn]
    for j in (0, 1):
        rows = [np.concatenate([values[codes == c, j] for c in row]) for row in drawn]
        assert means[:, j] == pytest.approx([r.mean() for r in rows])
        assert medians[:, j] == pytest.approx([np.median(r) for r in rows])


def test_resample_count_honoured_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "CHUNK_ELEMENTS", 1000)  # 10 resamples per chunk for 100 pairs
    values = np.random.default_rng(1).normal(size=(100, 2))
    for codes in (np.arange(100), np.arange(100) // 4):
        means, medians = stats.resample_statistics(values, codes, seed=3, resamples=1005)
        assert means.shape == medians.shape == (1005, 2)
        assert len(np.unique(means[:, 0])) > 900  # every chunk drew its own resamples
    assert report_of(cost_pairs(50, 1), resamples=1234)["deltas"]["bootstrap"]["resamples"] == 1234


def test_chunks_stay_bounded_for_ten_thousand_pairs() -> None:
    assert stats.chunk_rows(10_000, 10_000) * 10_000 <= stats.CHUNK_ELEMENTS < 10_000 * 10_000


# ---------------------------------------------------------------- report contents


def test_too_few_pairs_gives_no_delta_but_arm_figures() -> None:
    report = report_of(table_pairs(3, 0, 5, 1))
    note = "only 9 valid pairs; at least 10 are needed for a delta"
    assert report["note"] == note and report["verdict"] == note
    assert report["success"]["delta"] is None and report["success"]["ci95"] is None
    assert report["success"]["mcnemar"] is None and report["deltas"] is None
    assert report["arms"]["b"]["successes"] == 8 and report["arms"]["a"]["success_ci95"] is not None
    markdown = render_markdown(report)
    assert note in markdown and "- Delta:" not in markdown and " pp" not in markdown


def test_counts_per_arm_and_json_native() -> None:
    pairs = cost_pairs(40, 2)
    excluded = [
        ExcludedPair(900, 0, 5, None, "infra_invalid", "box never started"),
        ExcludedPair(901, 0, 6, 7, "invalid", "source run deleted"),
        ExcludedPair(902, 0, None, None, "infra_invalid", "box never started"),
    ]
    report = build_report(META, pairs, excluded, 4, seed=1, resamples=500)
    assert report["counts"] == {
        "pairs_total": 47,
        "valid": 40,
        "invalid": 1,
        "infra_invalid": 2,
        "pending": 4,
    }
    assert report["excluded"]["by_reason"] == {"box never started": 2, "source run deleted": 1}
    arm = report["arms"]["a"]
    assert arm["runs"] == 40 and arm["successes"] == sum(p.a_success for p in pairs)
    assert arm["tokens"]["total"] == sum(p.a_tokens.total for p in pairs)
    assert Decimal(arm["cost_usd_sum"]) == sum((p.a_cost_usd for p in pairs), Decimal(0))
    assert report["arms"]["b"]["wall_s_known"] == 20 and report["arms"]["b"]["wall_s_median"] == 20.0
    assert json.loads(json.dumps(report)) == report
    usd_strings = [arm["cost_usd_mean"], *report["deltas"]["cost_usd"]["mean_ci95"]]
    assert all(re.fullmatch(r"-?\d+\.\d{6}", s) for s in usd_strings)
    with pytest.raises(ValueError, match="unknown kind"):
        build_report(META, pairs, [ExcludedPair(1, 0, None, None, "lost", "?")], 0, seed=1)


def test_verdict_names_the_better_arm() -> None:
    better_b = report_of(table_pairs(40, 3, 25, 32))
    assert better_b["verdict"].startswith("B better than A: +22.0 pp [95% CI +12.5, +31.5]")
    assert "McNemar p<0.001" in better_b["verdict"]
    assert report_of(table_pairs(40, 25, 3, 32))["verdict"].startswith(
        "A better than B: -22.0 pp [95% CI -31.5, -12.5]"
    )


def test_scatter_is_capped_deterministically() -> None:
    pairs = cost_pairs(2500, 3)
    first, again = report_of(pairs, resamples=100), report_of(pairs, resamples=100)
    scatter = first["pairs_scatter"]
    assert scatter["shown"] == 2000 and scatter["total"] == 2500 and scatter["subsampled"]
    assert len(scatter["points"]) == 2000 and scatter["points"] == again["pairs_scatter"]["points"]
    assert "2000 of 2500" in scatter["note"]


# ---------------------------------------------------------------- rendering


def test_markdown_contains_the_figures() -> None:
    excluded = [ExcludedPair(1000 + i, 0, None, None, "invalid", f"reason {i % 3}") for i in range(60)]
    report = build_report(META, table_pairs(30, 20, 8, 42), excluded, 2, seed=1, resamples=500)
    markdown = render_markdown(report)
    success = report["success"]
    for figure in (
        "# Campaign 7: retry-bump",
        META.arm_a,
        META.arm_b,
        "| 162 | 100 | 60 | 0 | 2 |",
        "50.0% [40.4, 59.6]",
        f"{success['delta'] * 100:+.1f} pp",
        "A only 20, B only 8",
        f"p = {success['mcnemar']['p_value']:.4g}",
        f"{success['mde']['value'] * 100:.1f} pp",
        report["deltas"]["cost_usd"]["mean"],
        report["verdict"],
        "... and 10 more not shown.",
    ):
        assert figure in markdown, figure
    assert markdown.count("| invalid | reason") == 50


def svg_tree(report: dict[str, Any]) -> ET.Element:
    return ET.fromstring(render_svg(report))


def test_svg_parses_with_a_circle_per_point_and_arm_labels() -> None:
    meta = ReportMeta(8, None, "replay", "recorded <A> & co", "overrides {'model': \"x\"}", 1)
    report = build_report(meta, cost_pairs(120, 5), [], 0, seed=2, resamples=200)
    root = svg_tree(report)
    texts = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert root.get("width") == "720" and root.get("height") == "360"
    assert len(list(root.iter(f"{SVG}circle"))) == len(report["pairs_scatter"]["points"]) == 120
    assert "A: recorded <A> & co" in texts and "B: overrides {'model': \"x\"}" in texts
    assert "Arm A cost per run (USD)" in texts and "Arm B cost per run (USD)" in texts
    assert "http" not in render_svg(report).replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_empty_equal_and_missing_ci_reports_render() -> None:
    empty = build_report(META, [], [], 3, seed=1)
    same_cost = report_of([pair(i, True, False) for i in range(12)])
    for report in (empty, same_cost):
        assert len(list(svg_tree(report).iter(f"{SVG}circle"))) == len(report["pairs_scatter"]["points"])
        assert "## Verdict" in render_markdown(report)
    assert "no valid pairs" in render_svg(empty) and "only 0 valid pairs" in render_markdown(empty)
    no_ci = json.loads(json.dumps(same_cost))
    no_ci["arms"]["a"]["success_ci95"] = None
    no_ci["success"]["ci95"] = None
    assert svg_tree(no_ci).tag == f"{SVG}svg" and "no interval" in render_markdown(no_ci)


# ---------------------------------------------------------------- timing (printed, never asserted)


def test_timing_ten_thousand_pairs_ten_thousand_resamples() -> None:
    pairs = cost_pairs(10_000, 9)
    start = time.perf_counter()
    report = build_report(META, pairs, [], 0, seed=1, resamples=10_000)
    elapsed = time.perf_counter() - start
    print(f"\nbuild_report, 10,000 pairs x 10,000 resamples: {elapsed:.2f} s")
    assert report["deltas"]["bootstrap"]["resamples"] == 10_000
