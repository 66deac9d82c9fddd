"""Summaries of timing samples and the row type every section reports."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ParamSpec

P = ParamSpec("P")


@dataclass(frozen=True)
class Summary:
    """Median, p95 and mean of a sample, in milliseconds."""

    n: int
    median_ms: float
    p95_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Summary:
        if not seconds:
            return cls(0, float("nan"), float("nan"), float("nan"))
        ms = [s * 1000 for s in seconds]
        return cls(len(ms), statistics.median(ms), percentile(ms, 95), statistics.fmean(ms))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (the `inclusive` method); the only value for a sample of one."""
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(pct) - 1]


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def timed(action: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> float:
    """Seconds `action(*args, **kwargs)` took."""
    start = time.perf_counter()
    action(*args, **kwargs)
    return time.perf_counter() - start


def settled(action: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> float:
    """Time `action` after flushing dirty pages, so writeback left by an earlier step is not billed to it."""
    os.sync()
    return timed(action, *args, **kwargs)


@dataclass(frozen=True)
class Row:
    """One line of the final table: a figure, and what it is compared with."""

    section: str
    metric: str
    median: str
    p95: str = ""
    n: str = ""
    versus: str = ""
    ratio: str = ""

    @classmethod
    def timing(cls, section: str, metric: str, summary: Summary, versus: str = "", ratio: str = "") -> Row:
        p95 = ms(summary.p95_ms) if summary.n > 1 else ""
        return cls(section, metric, ms(summary.median_ms), p95, str(summary.n), versus, ratio)


def ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 10_000 else f"{value / 1000:.2f} s"


def times(value: float) -> str:
    return f"{value:.2f}x"
