"""A campaign's report: per-arm figures, the paired success delta, token and cost deltas, exclusions.

Pure: takes the pairs the database side loaded and judged, returns a JSON-native dict (floats, ints,
strings, lists; USD as decimal strings with 6 places). The statistics are in `stats`, which states
the methods; the same inputs and seed give an identical report, whatever order the pairs came in.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

from shared.campaigns import stats

SCHEMA = "campaign-report/1"
SCATTER_CAP = 2000
USD_PLACES = Decimal("0.000001")
EXCLUDED_KINDS = ("invalid", "infra_invalid")


@dataclass(frozen=True)
class Tokens:
    """Token counts of one run, by billing category."""

    input: int
    """Uncached input tokens."""
    output: int
    """Output tokens."""
    cache_read: int
    """Input tokens read from the prompt cache."""
    cache_write: int
    """Input tokens written to the prompt cache."""

    @property
    def total(self) -> int:
        """All four categories together."""
        return self.input + self.output + self.cache_read + self.cache_write


@dataclass(frozen=True)
class PairOutcome:
    """One valid pair: both the arm A run and the arm B run reached a terminal state."""

    source_run_id: int
    """The source run the pair replays: the cluster, as pairs from one source are correlated."""
    sample: int
    """Repeat index 0..k-1 within the source run."""
    a_run_id: int
    """The arm A run."""
    b_run_id: int
    """The arm B run."""
    a_success: bool
    """Whether the arm A run succeeded."""
    b_success: bool
    """Whether the arm B run succeeded."""
    a_attempts: int
    """Attempts the arm A run used."""
    b_attempts: int
    """Attempts the arm B run used."""
    a_tokens: Tokens
    """Tokens the arm A run spent."""
    b_tokens: Tokens
    """Tokens the arm B run spent."""
    a_cost_usd: Decimal
    """What the arm A run cost, in USD."""
    b_cost_usd: Decimal
    """What the arm B run cost, in USD."""
    a_wall_s: float | None
    """Wall-clock seconds of the arm A run; None when unknown."""
    b_wall_s: float | None
    """Wall-clock seconds of the arm B run; None when unknown."""


@dataclass(frozen=True)
class ExcludedPair:
    """A pair left out of the statistics, and why."""

    source_run_id: int
    """The source run the pair replays."""
    sample: int
    """Repeat index within the source run."""
    a_run_id: int | None
    """The arm A run, if there was one."""
    b_run_id: int | None
    """The arm B run, if there was one."""
    kind: str
    """"invalid" (the pair cannot be compared) or "infra_invalid" (the infrastructure failed it)."""
    reason: str
    """Why, in words."""


@dataclass(frozen=True)
class ReportMeta:
    """What the campaign is: identity, mode and the two arms' labels."""

    campaign_id: int
    """The campaign's id."""
    name: str | None
    """Its name, if given."""
    mode: str
    """"rerun", "failed_phases" or "replay"."""
    arm_a: str
    """Human label of arm A, e.g. "source runs as recorded"."""
    arm_b: str
    """Human label of arm B, e.g. "re-run with overrides {...}"."""
    repeats: int
    """Pairs per source run."""


def usd(value: Decimal | float) -> str:
    """USD as a decimal string with 6 places, never "-0.000000"."""
    quantized = Decimal(str(value)).quantize(USD_PLACES) + 0
    return f"{quantized:f}"


def build_report(
    meta: ReportMeta,
    valid: Sequence[PairOutcome],
    excluded: Sequence[ExcludedPair],
    pending: int,
    *,
    seed: int,
    resamples: int = 10_000,
    min_valid_pairs: int = 10,
) -> dict[str, Any]:
    """The campaign's report as a JSON-native dict; see the module docstrings for the methods."""
    if resamples < 1 or min_valid_pairs < 1 or pending < 0:
        raise ValueError("resamples and min_valid_pairs must be positive and pending non-negative")
    pairs = sorted(valid, key=lambda p: (p.source_run_id, p.sample, p.a_run_id, p.b_run_id))
    enough = len(pairs) >= min_valid_pairs
    success = success_section(pairs) if enough else unavailable_success()
    note = (
        None
        if enough
        else f"only {len(pairs)} valid pairs; at least {min_valid_pairs} are needed for a delta"
    )
    return {
        "schema": SCHEMA,
        "campaign": campaign_section(meta),
        "counts": counts_section(pairs, excluded, pending),
        "arms": {"a": arm_section(meta.arm_a, pairs, "a"), "b": arm_section(meta.arm_b, pairs, "b")},
        "success": success,
        "deltas": delta_section(pairs, seed=seed, resamples=resamples) if enough else None,
        "verdict": verdict(success) if enough else note,
        "note": note,
        "excluded": excluded_section(excluded),
        "pairs_scatter": scatter_section(pairs, seed=seed),
    }


def campaign_section(meta: ReportMeta) -> dict[str, Any]:
    return {
        "id": meta.campaign_id,
        "name": meta.name,
        "mode": meta.mode,
        "arm_a": meta.arm_a,
        "arm_b": meta.arm_b,
        "repeats": meta.repeats,
    }


def counts_section(
    valid: Sequence[PairOutcome], excluded: Sequence[ExcludedPair], pending: int
) -> dict[str, int]:
    kinds = Counter(e.kind for e in excluded)
    unknown = set(kinds) - set(EXCLUDED_KINDS)
    if unknown:
        raise ValueError(f"excluded pairs of unknown kind: {sorted(unknown)}")
    return {
        "pairs_total": len(valid) + len(excluded) + pending,
        "valid": len(valid),
        "invalid": kinds["invalid"],
        "infra_invalid": kinds["infra_invalid"],
        "pending": pending,
    }


@dataclass(frozen=True)
class _Side:
    """One arm's columns over the valid pairs."""

    success: list[bool]
    attempts: list[int]
    tokens: list[Tokens]
    cost: list[Decimal]
    wall: list[float]
    """Known wall times only."""


def _side(pairs: Sequence[PairOutcome], arm: str) -> _Side:
    if arm == "a":
        return _Side(
            [p.a_success for p in pairs],
            [p.a_attempts for p in pairs],
            [p.a_tokens for p in pairs],
            [p.a_cost_usd for p in pairs],
            [p.a_wall_s for p in pairs if p.a_wall_s is not None],
        )
    return _Side(
        [p.b_success for p in pairs],
        [p.b_attempts for p in pairs],
        [p.b_tokens for p in pairs],
        [p.b_cost_usd for p in pairs],
        [p.b_wall_s for p in pairs if p.b_wall_s is not None],
    )


def _mean(values: Sequence[float]) -> float | None:
    return float(statistics.fmean(values)) if values else None


def _interval(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [ci[0], ci[1]]


def token_sums(tokens: Sequence[Tokens]) -> dict[str, int]:
    return {
        "input": sum(t.input for t in tokens),
        "output": sum(t.output for t in tokens),
        "cache_read": sum(t.cache_read for t in tokens),
        "cache_write": sum(t.cache_write for t in tokens),
        "total": sum(t.total for t in tokens),
    }


def arm_section(label: str, pairs: Sequence[PairOutcome], arm: str) -> dict[str, Any]:
    """Per-arm figures over the valid pairs; the Wilson interval treats runs as independent."""
    side = _side(pairs, arm)
    runs, successes = len(pairs), sum(side.success)
    cost_sum = sum(side.cost, Decimal(0))
    return {
        "label": label,
        "runs": runs,
        "successes": successes,
        "success_rate": successes / runs if runs else None,
        "success_ci95": _interval(stats.wilson_interval(successes, runs)),
        "success_ci_method": "Wilson score, runs treated as independent",
        "attempts_mean": _mean(side.attempts),
        "tokens": token_sums(side.tokens),
        "tokens_total_mean": _mean([t.total for t in side.tokens]),
        "cost_usd_sum": usd(cost_sum),
        "cost_usd_mean": usd(cost_sum / runs) if runs else None,
        "wall_s_mean": _mean(side.wall),
        "wall_s_median": float(statistics.median(side.wall)) if side.wall else None,
        "wall_s_known": len(side.wall),
    }


DDOF_WHY = (
    "ddof=1: the unbiased sample variance, and the value at which Miller's clustered formula with one "
    "pair per cluster equals the naive SE"
)
MCNEMAR_TEST = "exact two-sided: binomtest(min(a_only, b_only), a_only + b_only, 0.5); 1.0 with none"
MCNEMAR_CLUSTER_CAVEAT = "McNemar treats pairs as independent; with repeats the clustered CI is the guide"


def _clusters(pairs: Sequence[PairOutcome]) -> stats.Ints:
    return stats.cluster_codes([p.source_run_id for p in pairs])


def success_section(pairs: Sequence[PairOutcome]) -> dict[str, Any]:
    """Paired success delta (B - A) with its CI, McNemar's exact test and the MDE."""
    y_a = [p.a_success for p in pairs]
    y_b = [p.b_success for p in pairs]
    estimate = stats.paired_delta(y_a, y_b, _clusters(pairs))
    return {
        "delta": estimate.delta,
        "ci95": _interval(estimate.ci95),
        "se": estimate.se,
        "se_method": "clustered" if estimate.clustered else "naive",
        "se_formula": stats.CLUSTERED_SE if estimate.clustered else stats.NAIVE_SE,
        "se_naive": estimate.se_naive,
        "se_clustered": estimate.se_clustered,
        "ddof": 1,
        "ddof_why": DDOF_WHY,
        "z": stats.Z_975,
        "n": estimate.n,
        "clusters": estimate.clusters,
        "mcnemar": mcnemar_section(y_a, y_b, clustered=estimate.clustered),
        "mde": mde_section(y_a, y_b, stats.design_effect(estimate)),
    }


def unavailable_success() -> dict[str, Any]:
    """The success section's shape with nothing estimated: too few pairs for a delta."""
    keys = ("delta", "ci95", "se", "se_method", "se_formula", "se_naive", "se_clustered", "ddof")
    fields: dict[str, Any] = dict.fromkeys(keys)
    return fields | {"ddof_why": None, "z": None, "n": None, "clusters": None, "mcnemar": None, "mde": None}


def mcnemar_section(y_a: Sequence[bool], y_b: Sequence[bool], *, clustered: bool) -> dict[str, Any]:
    test = stats.mcnemar_exact(y_a, y_b)
    both = sum(a and b for a, b in zip(y_a, y_b, strict=True))
    return {
        "a_only": test.a_only,
        "b_only": test.b_only,
        "both": both,
        "neither": len(y_a) - both - test.a_only - test.b_only,
        "p_value": test.p_value,
        "test": MCNEMAR_TEST,
        "note": MCNEMAR_CLUSTER_CAVEAT if clustered else None,
    }


def mde_section(y_a: Sequence[bool], y_b: Sequence[bool], design_effect: float) -> dict[str, Any]:
    discordant = sum(a != b for a, b in zip(y_a, y_b, strict=True))
    n = len(y_a)
    return {
        "value": stats.minimum_detectable_effect(discordant, n, design_effect),
        "formula": stats.MDE_FORMULA,
        "discordance_rate": discordant / n if n else None,
        "design_effect": design_effect,
        "power": 0.8,
        "alpha": 0.05,
        "note": None if discordant else "no discordant pairs: sigma_d is 0, so no MDE",
    }


def pp(value: float) -> str:
    """A proportion as signed percentage points."""
    return f"{value * 100:+.1f}"


def p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def verdict(success: dict[str, Any]) -> str:
    """Plain words: which arm is better, or no detectable difference and the MDE."""
    delta, ci = success["delta"], success["ci95"]
    p = p_text(success["mcnemar"]["p_value"])
    if ci is None:
        return f"B - A {pp(delta)} pp, McNemar {p}; no interval: fewer than two source runs or pairs"
    figures = f"{pp(delta)} pp [95% CI {pp(ci[0])}, {pp(ci[1])}], McNemar {p}"
    if ci[0] > 0:
        return f"B better than A: {figures}"
    if ci[1] < 0:
        return f"A better than B: {figures}"
    mde = success["mde"]["value"]
    power = "no MDE: no discordant pairs" if mde is None else f"MDE {mde * 100:.1f} pp"
    return f"no detectable difference: {figures}; {power}"


def delta_section(pairs: Sequence[PairOutcome], *, seed: int, resamples: int) -> dict[str, Any]:
    """Per-pair B - A total tokens and USD: mean and median with cluster-bootstrap 95% intervals."""
    token_deltas = [p.b_tokens.total - p.a_tokens.total for p in pairs]
    cost_deltas = [p.b_cost_usd - p.a_cost_usd for p in pairs]
    values = np.array([token_deltas, [float(c) for c in cost_deltas]], dtype=np.float64).T
    clusters = _clusters(pairs)
    tokens, cost = stats.cluster_bootstrap(values, clusters, seed=seed, resamples=resamples)
    return {
        "tokens": {
            "mean": tokens.mean,
            "median": tokens.median,
            "mean_ci95": _interval(tokens.mean_ci95),
            "median_ci95": _interval(tokens.median_ci95),
        },
        "cost_usd": {
            # point figures exact from the Decimals; the intervals come from float resamples
            "mean": usd(sum(cost_deltas, Decimal(0)) / len(cost_deltas)),
            "median": usd(statistics.median(cost_deltas)),
            "mean_ci95": [usd(x) for x in cost.mean_ci95],
            "median_ci95": [usd(x) for x in cost.median_ci95],
        },
        "bootstrap": {
            "resamples": tokens.resamples,
            "seed": seed,
            "unit": "source run (clusters resampled with replacement)",
            "clusters": int(clusters.max()) + 1,
            "interval": "percentile 2.5 / 97.5",
            "direction": "B - A per pair",
        },
    }


def excluded_section(excluded: Sequence[ExcludedPair]) -> dict[str, Any]:
    ordered = sorted(excluded, key=lambda e: (e.source_run_id, e.sample, e.kind, e.reason))
    return {
        "count": len(ordered),
        "by_kind": dict(sorted(Counter(e.kind for e in ordered).items())),
        "by_reason": dict(sorted(Counter(e.reason for e in ordered).items())),
        "pairs": [
            {
                "source_run_id": e.source_run_id,
                "sample": e.sample,
                "a_run_id": e.a_run_id,
                "b_run_id": e.b_run_id,
                "kind": e.kind,
                "reason": e.reason,
            }
            for e in ordered
        ],
    }


def scatter_section(pairs: Sequence[PairOutcome], *, seed: int) -> dict[str, Any]:
    """(A cost, B cost) per valid pair, at most SCATTER_CAP of them, subsampled with the seed."""
    chosen: Sequence[PairOutcome] = pairs
    if len(pairs) > SCATTER_CAP:
        picks = np.sort(np.random.default_rng(seed).choice(len(pairs), SCATTER_CAP, replace=False))
        chosen = [pairs[int(i)] for i in picks]
    subsampled = len(chosen) < len(pairs)
    return {
        "points": [[float(p.a_cost_usd), float(p.b_cost_usd)] for p in chosen],
        "total": len(pairs),
        "shown": len(chosen),
        "cap": SCATTER_CAP,
        "subsampled": subsampled,
        "note": (
            f"{len(chosen)} of {len(pairs)} pairs, a uniform subsample drawn with the report's seed"
            if subsampled
            else "every valid pair"
        ),
    }
