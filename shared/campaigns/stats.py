"""Statistics for a campaign's paired outcomes (arm A run, arm B run, from one source task).

Success is compared pair by pair: d_i = y_B,i - y_A,i, Δ = mean(d). Its standard error is
sd(d)/√n with ddof=1, or, when several pairs share a source run (repeats > 1, so pairs in a cluster
are correlated), the cluster-robust SE of Miller 2024, "Adding Error Bars to Evals" (arXiv 2411.00640):
SE = (1/n)·√[C/(C-1)·Σ_c(Σ_{i∈c}(d_i - Δ))²]. With one pair per cluster that formula is exactly
sd(d, ddof=1)/√n, which is why ddof=1 is the naive choice: the two agree where both apply. The 95%
interval is Δ ± z₀.₉₇₅·SE. McNemar's exact test is the two-sided binomial test of the discordant pairs.
The minimum detectable effect (80% power, alpha=0.05 two-sided) is (z₀.₉₇₅ + z₀.₈)·sigma_d/√n with
sigma_d = √((b+c)/n), scaled by SE_clustered/SE_naive (at least 1) when clustered.

Token and cost deltas get a cluster bootstrap: whole source runs are resampled with replacement,
and the mean and median of each resample give percentile 95% intervals. Resamples are drawn in
chunks of at most CHUNK_ELEMENTS per array, so memory is bounded by the chunk, not resamples x pairs.
With one pair per source run a resample is a row of pair ranks: means are a gather and a sum, medians
a partition of the ranks. With repeats a resample is a row of per-cluster counts: means are a matrix
product, medians found by counting over blocks of the sorted values, then within one block.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import binomtest, norm  # type: ignore[import-untyped]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.intp]

Z_975 = float(norm.ppf(0.975))
Z_80 = float(norm.ppf(0.80))
CHUNK_ELEMENTS = 1 << 22
"""Most elements one bootstrap chunk holds per array (32 MiB of float64)."""

NAIVE_SE = "sd(d, ddof=1)/sqrt(n)"
CLUSTERED_SE = "(1/n)*sqrt(C/(C-1)*sum_c(sum_{i in c}(d_i - delta))^2)  [Miller 2024, arXiv 2411.00640]"
MDE_FORMULA = (
    "(z_0.975 + z_0.8) * sqrt((b+c)/n) / sqrt(n) * design_effect, "
    "design_effect = max(1, SE_clustered/SE_naive) when clustered, else 1"
)


@dataclass(frozen=True)
class DeltaEstimate:
    """Mean paired difference with its standard error and 95% interval."""

    delta: float
    """mean(d_i), d_i = y_B,i - y_A,i."""
    se: float | None
    """The SE used for the interval; None when it cannot be estimated (n < 2, or one cluster)."""
    se_naive: float | None
    """sd(d, ddof=1)/√n, pairs treated as independent."""
    se_clustered: float | None
    """Miller's cluster-robust SE; None with fewer than two clusters."""
    clustered: bool
    """True when some source run contributed more than one pair, so `se` is the clustered one."""
    clusters: int
    """Number of distinct source runs."""
    n: int
    """Number of pairs."""
    ci95: tuple[float, float] | None
    """Δ ± z₀.₉₇₅·SE."""


@dataclass(frozen=True)
class McNemar:
    """Discordant pair counts and McNemar's exact two-sided p-value."""

    a_only: int
    """Pairs where only arm A succeeded (b in the usual notation)."""
    b_only: int
    """Pairs where only arm B succeeded (c in the usual notation)."""
    p_value: float
    """binomtest(min(b, c), b + c, 0.5).pvalue; 1.0 with no discordant pairs."""


@dataclass(frozen=True)
class BootstrapSummary:
    """Point mean and median of a per-pair delta with cluster-bootstrap percentile 95% intervals."""

    mean: float
    """Mean of the observed deltas."""
    median: float
    """Median of the observed deltas."""
    mean_ci95: tuple[float, float]
    """2.5th and 97.5th percentiles of the resampled means."""
    median_ci95: tuple[float, float]
    """2.5th and 97.5th percentiles of the resampled medians."""
    resamples: int
    """How many resamples the intervals rest on."""


def wilson_interval(successes: int, trials: int) -> tuple[float, float] | None:
    """Wilson score 95% interval for a proportion; None with no trials."""
    if trials == 0:
        return None
    ci = binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def cluster_codes(cluster_ids: npt.ArrayLike) -> Ints:
    """Dense codes 0..C-1 for the given cluster ids, in sorted id order."""
    _, codes = np.unique(np.asarray(cluster_ids), return_inverse=True)
    return codes.astype(np.intp).ravel()


def naive_se(d: Floats) -> float | None:
    """sd(d, ddof=1)/√n; None below two pairs, where the sample variance is undefined."""
    if d.size < 2:
        return None
    return float(np.std(d, ddof=1) / np.sqrt(d.size))


def clustered_se(d: Floats, clusters: Ints) -> float | None:
    """Miller's cluster-robust SE of mean(d); None below two clusters."""
    n_clusters = int(clusters.max()) + 1 if clusters.size else 0
    if n_clusters < 2:
        return None
    residual_sums = np.bincount(clusters, weights=d - d.mean(), minlength=n_clusters)
    scale = n_clusters / (n_clusters - 1)
    return float(np.sqrt(scale * np.sum(residual_sums**2)) / d.size)


def paired_delta(y_a: npt.ArrayLike, y_b: npt.ArrayLike, clusters: Ints) -> DeltaEstimate:
    """Δ = mean(y_B - y_A) with the naive or clustered SE and a normal 95% interval."""
    d = np.asarray(y_b, dtype=np.float64) - np.asarray(y_a, dtype=np.float64)
    if d.size == 0:
        raise ValueError("paired_delta needs at least one pair")
    sizes = np.bincount(clusters)
    clustered = bool(sizes.max() > 1)
    se_naive, se_clustered = naive_se(d), clustered_se(d, clusters)
    se = se_clustered if clustered else se_naive
    delta = float(d.mean())
    ci = None if se is None else (delta - Z_975 * se, delta + Z_975 * se)
    return DeltaEstimate(delta, se, se_naive, se_clustered, clustered, int(sizes.size), int(d.size), ci)


def mcnemar_exact(y_a: npt.ArrayLike, y_b: npt.ArrayLike) -> McNemar:
    """McNemar's exact test: under H0 each discordant pair is A-only or B-only with probability 1/2."""
    a, b = np.asarray(y_a, dtype=bool), np.asarray(y_b, dtype=bool)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    if a_only + b_only == 0:
        return McNemar(0, 0, 1.0)
    p = float(binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue)
    return McNemar(a_only, b_only, min(p, 1.0))


def design_effect(estimate: DeltaEstimate) -> float:
    """SE_clustered/SE_naive when clustered and both are defined, never below 1; otherwise 1.

    A ratio under 1 from a handful of clusters is noise, not evidence that repeats add information,
    so it may inflate the MDE but never shrink it.
    """
    if not estimate.clustered or not estimate.se_naive or estimate.se_clustered is None:
        return 1.0
    return max(1.0, estimate.se_clustered / estimate.se_naive)


def minimum_detectable_effect(discordant: int, n: int, deff: float = 1.0) -> float | None:
    """Smallest |Δ| detected with 80% power at alpha=0.05 two-sided; None with no pairs or no discordance.

    sigma_d = √((b+c)/n) is the sd of d under Δ≈0, where d is ±1 on discordant pairs and 0 elsewhere;
    with no discordant pairs it is 0 and an MDE of 0 would claim a precision the data do not have.
    """
    if n == 0 or discordant == 0:
        return None
    sigma_d = np.sqrt(discordant / n)
    return float((Z_975 + Z_80) * sigma_d / np.sqrt(n) * deff)


@dataclass(frozen=True)
class _Blocks:
    """A sorted column cut into blocks of `width` values, for weighted order statistics."""

    membership: Floats
    """clusters x blocks: how many of each cluster's pairs fall in each block."""
    clusters: Ints
    """Cluster of each sorted value, padded (with cluster 0) to blocks x width."""
    real: Floats
    """1 for a sorted value, 0 for padding."""
    width: int
    """Values per block."""


def _blocks(sorted_clusters: Ints, n_clusters: int) -> _Blocks:
    n = sorted_clusters.size
    width = max(1, math.isqrt(n))  # balances the blocks matrix product against the in-block scan
    n_blocks = -(-n // width)
    pad = n_blocks * width - n
    flat = sorted_clusters * n_blocks + np.arange(n) // width
    membership = np.bincount(flat, minlength=n_clusters * n_blocks).reshape(n_clusters, n_blocks)
    return _Blocks(
        membership=membership.astype(np.float64),
        clusters=np.concatenate([sorted_clusters, np.zeros(pad, dtype=np.intp)]),
        real=np.concatenate([np.ones(n), np.zeros(pad)]),
        width=width,
    )


@dataclass(frozen=True)
class _Prepared:
    """What every bootstrap chunk reads: the delta columns sorted, and per-cluster totals."""

    sorted_values: list[Floats]
    """Each column in ascending order."""
    rank_maps: list[npt.NDArray[np.int32]]
    """rank_maps[j][r]: rank in column j of the pair ranked r in column 0."""
    blocks: list[_Blocks]
    """Each sorted column's clusters, in blocks."""
    cluster_sums: Floats
    """clusters x columns: per-cluster sum of each column."""
    cluster_sizes: Floats
    """Pairs per cluster."""

    @property
    def singletons(self) -> bool:
        return bool(np.all(self.cluster_sizes == 1))


def _prepare(values: Floats, clusters: Ints) -> _Prepared:
    n_clusters = int(clusters.max()) + 1
    orders = [np.argsort(col, kind="stable") for col in values.T]
    ranks = [np.argsort(order, kind="stable") for order in orders]
    return _Prepared(
        sorted_values=[col[order] for col, order in zip(values.T, orders, strict=True)],
        rank_maps=[rank[orders[0]].astype(np.int32) for rank in ranks],
        blocks=[_blocks(clusters[order], n_clusters) for order in orders],
        cluster_sums=np.stack(
            [np.bincount(clusters, weights=col, minlength=n_clusters) for col in values.T], axis=1
        ),
        cluster_sizes=np.bincount(clusters, minlength=n_clusters).astype(np.float64),
    )


def chunk_rows(n_pairs: int, n_clusters: int) -> int:
    """Resamples per chunk, so no per-chunk array exceeds CHUNK_ELEMENTS."""
    return max(1, CHUNK_ELEMENTS // max(n_pairs, n_clusters, 1))


def _middle_ranks(total: int) -> list[int]:
    """0-based ranks whose values average to the median of `total` values."""
    return sorted({(total - 1) // 2, total // 2})


def _singleton_chunk(prep: _Prepared, seed: np.random.SeedSequence, rows: int) -> tuple[Floats, Floats]:
    """Means and medians of `rows` resamples when every cluster is one pair.

    Drawing ranks in column 0's sorted order is the same as drawing pairs, and a resample's k-th
    smallest rank is its k-th smallest value: a partition of int32 ranks finds the median.
    """
    n = prep.sorted_values[0].size
    drawn = np.random.default_rng(seed).integers(0, n, size=(rows, n), dtype=np.int32)
    middle = _middle_ranks(n)
    means, medians = [], []
    for j, (values, rank_map) in enumerate(zip(prep.sorted_values, prep.rank_maps, strict=True)):
        ranks = drawn if j == 0 else rank_map[drawn]
        means.append(values[ranks].sum(axis=1) / n)
        # in place: reordering within a row changes neither its sum nor the later columns' gathers
        ranks.partition(middle, axis=1)
        medians.append(values[ranks[:, middle]].mean(axis=1))
    return np.stack(means, axis=1), np.stack(medians, axis=1)


def resample_counts(rng: np.random.Generator, n_clusters: int, rows: int) -> Floats:
    """rows x C matrix: how often each cluster was drawn in each resample of C clusters.

    Counts turn resample means and per-block counts into matrix products (BLAS, hence float64).
    """
    drawn = rng.integers(0, n_clusters, size=(rows, n_clusters), dtype=np.int32)
    offsets = np.arange(rows, dtype=np.int64)[:, None] * n_clusters
    counts = np.bincount((drawn + offsets).ravel(), minlength=rows * n_clusters)
    return counts.reshape(rows, n_clusters).astype(np.float64)


def weighted_order_statistic(blocks: _Blocks, counts: Floats, block_cumulative: Floats, k: Floats) -> Ints:
    """Sorted index of each resample's k-th smallest value (k 1-based, one per row).

    The block holding it comes from the per-block cumulative counts; only that block's values are
    then scanned, so no resamples x pairs array is built.
    """
    rows = np.arange(counts.shape[0])
    block = np.sum(block_cumulative < k[:, None], axis=1)
    before = np.where(block > 0, block_cumulative[rows, np.maximum(block - 1, 0)], 0.0)
    positions = block[:, None] * blocks.width + np.arange(blocks.width)
    weights = counts[rows[:, None], blocks.clusters[positions]] * blocks.real[positions]
    inside = np.sum(np.cumsum(weights, axis=1) < (k - before)[:, None], axis=1)
    found: Ints = block * blocks.width + inside
    return found


def weighted_medians(values: Floats, blocks: _Blocks, counts: Floats, totals: Floats) -> Floats:
    """Median of each resample given as per-cluster counts: ranks ⌊(m+1)/2⌋ and ⌊m/2⌋+1 averaged."""
    block_cumulative = np.cumsum(counts @ blocks.membership, axis=1)
    lower = weighted_order_statistic(blocks, counts, block_cumulative, np.floor((totals + 1) / 2))
    upper = weighted_order_statistic(blocks, counts, block_cumulative, np.floor(totals / 2) + 1)
    medians: Floats = (values[lower] + values[upper]) / 2
    return medians


def _cluster_chunk(prep: _Prepared, seed: np.random.SeedSequence, rows: int) -> tuple[Floats, Floats]:
    """Means and medians of `rows` resamples of whole clusters of unequal or repeated pairs."""
    counts = resample_counts(np.random.default_rng(seed), prep.cluster_sizes.size, rows)
    totals = counts @ prep.cluster_sizes
    means = (counts @ prep.cluster_sums) / totals[:, None]
    medians = [
        weighted_medians(values, blocks, counts, totals)
        for values, blocks in zip(prep.sorted_values, prep.blocks, strict=True)
    ]
    return means, np.stack(medians, axis=1)


def _percentile_ci(samples: Floats) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def resample_statistics(
    values: Floats, clusters: Ints, *, seed: int, resamples: int
) -> tuple[Floats, Floats]:
    """All resamples' means and medians (resamples x columns), chunk by chunk on up to two threads.

    Each chunk has its own child of SeedSequence(seed), so results do not depend on which thread
    ran it or in what order; numpy releases the GIL in the heavy calls, so threads do overlap.
    """
    prep = _prepare(values, clusters)
    step = chunk_rows(prep.sorted_values[0].size, prep.cluster_sizes.size)
    sizes = [min(step, resamples - start) for start in range(0, resamples, step)]
    seeds = np.random.SeedSequence(seed).spawn(len(sizes))
    chunk = _singleton_chunk if prep.singletons else _cluster_chunk
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        results = list(pool.map(chunk, [prep] * len(sizes), seeds, sizes))
    return np.concatenate([m for m, _ in results]), np.concatenate([m for _, m in results])


def cluster_bootstrap(values: Floats, clusters: Ints, *, seed: int, resamples: int) -> list[BootstrapSummary]:
    """Cluster-bootstrap mean and median intervals for each column of `values` (pairs x columns).

    All columns share each resample, so the token and cost intervals come from the same draws.
    """
    if values.shape[0] == 0 or resamples < 1:
        raise ValueError("cluster_bootstrap needs at least one pair and one resample")
    means, medians = resample_statistics(values, clusters, seed=seed, resamples=resamples)
    return [
        BootstrapSummary(
            float(np.mean(col)),
            float(np.median(col)),
            _percentile_ci(means[:, j]),
            _percentile_ci(medians[:, j]),
            resamples,
        )
        for j, col in enumerate(values.T)
    ]
