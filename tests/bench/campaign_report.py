"""Campaign report: build_report on synthetic pairs, one pair per source run (the partition path) and
three repeats per source run (the cluster-count path), against a 2 s target for 10,000 x 10,000."""

from __future__ import annotations

from decimal import Decimal

import numpy as np

from shared.campaigns.report import PairOutcome, ReportMeta, Tokens, build_report
from tests.bench.stats import Row, Summary, ms, timed

SECTION = "(g) campaign report"
TARGET_MS = 2000.0
META = ReportMeta(0, "bench", "rerun", "source runs as recorded", "re-run with overrides", 1)


def synthetic_pairs(pairs: int, repeats: int = 1, seed: int = 0) -> list[PairOutcome]:
    """Pairs with plausible token counts, costs and a +10 pp success shift; `repeats` per source run."""
    rng = np.random.default_rng(seed)
    a_tok = rng.integers(1_000, 200_000, pairs)
    b_tok = a_tok + rng.integers(-5_000, 15_000, pairs)
    a_cost = rng.uniform(0.01, 3.0, pairs)
    b_cost = a_cost * rng.uniform(0.8, 1.4, pairs)
    a_ok, b_ok = rng.random(pairs) < 0.5, rng.random(pairs) < 0.6
    return [
        PairOutcome(
            source_run_id=i // repeats,
            sample=i % repeats,
            a_run_id=2 * i,
            b_run_id=2 * i + 1,
            a_success=bool(a_ok[i]),
            b_success=bool(b_ok[i]),
            a_attempts=1,
            b_attempts=2,
            a_tokens=Tokens(int(a_tok[i]), 2_000, 0, 0),
            b_tokens=Tokens(int(b_tok[i]), 2_000, 0, 0),
            a_cost_usd=Decimal(f"{a_cost[i]:.6f}"),
            b_cost_usd=Decimal(f"{b_cost[i]:.6f}"),
            a_wall_s=60.0,
            b_wall_s=75.0,
        )
        for i in range(pairs)
    ]


def time_build(pairs: list[PairOutcome], resamples: int, iterations: int) -> Summary:
    return Summary.of(
        [timed(build_report, META, pairs, [], 0, seed=1, resamples=resamples) for _ in range(iterations)]
    )


def run(pairs: int = 10_000, resamples: int = 10_000, iterations: int = 3) -> list[Row]:
    """Time build_report on `pairs` synthetic pairs with `resamples` bootstrap resamples."""
    single = time_build(synthetic_pairs(pairs), resamples, iterations)
    repeated = time_build(synthetic_pairs(pairs, repeats=3), resamples, iterations)
    verdict = "within" if single.median_ms <= TARGET_MS else "OVER"
    shape = f"{pairs:,} pairs x {resamples:,} resamples"
    return [
        Row.timing(SECTION, f"build_report, {shape}, 1 pair per source", single),
        Row.timing(SECTION, f"build_report, {shape}, 3 repeats per source", repeated),
        Row(SECTION, f"1 pair per source (target <= {ms(TARGET_MS)})", ms(single.median_ms), versus=verdict),
    ]
