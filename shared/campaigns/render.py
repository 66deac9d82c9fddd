"""Render a campaign report (the dict from `report.build_report`) as Markdown and as one SVG.

The SVG is written by hand: 720x360, success-rate bars with Wilson whiskers on the left, per-pair
cost scatter (A on x, B on y, with y = x) on the right; generic font family only, no external
references, every text escaped. Both renderers accept reports with no valid pairs or no delta.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

EXCLUDED_ROWS = 50
LABEL_CHARS = 44

# ---------------------------------------------------------------- Markdown


def cell(value: object) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def signed(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:+,.{digits}f}"


def rate_with_ci(arm: dict[str, Any]) -> str:
    ci = arm["success_ci95"]
    bounds = "" if ci is None else f" [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]"
    return pct(arm["success_rate"]) + bounds


def header_lines(report: dict[str, Any]) -> list[str]:
    campaign = report["campaign"]
    title = f"# Campaign {campaign['id']}" + (f": {campaign['name']}" if campaign["name"] else "")
    return [
        title,
        "",
        f"Mode: `{campaign['mode']}`, repeats per source run: {campaign['repeats']}",
        "",
        f"- **Arm A**: {campaign['arm_a']}",
        f"- **Arm B**: {campaign['arm_b']}",
        "",
    ]


def counts_lines(report: dict[str, Any]) -> list[str]:
    c = report["counts"]
    return [
        "## Pairs",
        "",
        "| total | valid | invalid | infra_invalid | pending |",
        "|---:|---:|---:|---:|---:|",
        f"| {c['pairs_total']} | {c['valid']} | {c['invalid']} | {c['infra_invalid']} | {c['pending']} |",
        "",
    ]


def arm_rows(arm: dict[str, Any]) -> list[str]:
    tokens = arm["tokens"]
    wall = f"{num(arm['wall_s_mean'])} / {num(arm['wall_s_median'])} ({arm['wall_s_known']} known)"
    return [
        str(arm["runs"]),
        str(arm["successes"]),
        rate_with_ci(arm),
        num(arm["attempts_mean"], 2),
        f"{tokens['input']:,} / {tokens['output']:,} / {tokens['cache_read']:,} / {tokens['cache_write']:,}",
        f"{tokens['total']:,}",
        num(arm["tokens_total_mean"], 0),
        arm["cost_usd_sum"],
        arm["cost_usd_mean"] or "n/a",
        wall,
    ]


ARM_ROW_NAMES = (
    "runs",
    "successes",
    "success rate [95% Wilson CI]",
    "attempts (mean)",
    "tokens input / output / cache read / cache write (sum)",
    "tokens total (sum)",
    "tokens total (mean per run)",
    "cost USD (sum)",
    "cost USD (mean per run)",
    "wall s mean / median",
)


def arms_lines(report: dict[str, Any]) -> list[str]:
    a, b = arm_rows(report["arms"]["a"]), arm_rows(report["arms"]["b"])
    rows = [f"| {name} | {x} | {y} |" for name, x, y in zip(ARM_ROW_NAMES, a, b, strict=True)]
    return ["## Per arm (valid pairs)", "", "| | Arm A | Arm B |", "|---|---:|---:|", *rows, ""]


def success_lines(report: dict[str, Any]) -> list[str]:
    s = report["success"]
    lines = ["## Success delta (B - A)", ""]
    if s["delta"] is None:
        return [*lines, f"No delta: {report['note']}", ""]
    ci = s["ci95"]
    interval = "no interval" if ci is None else f"95% CI [{signed(ci[0] * 100)}, {signed(ci[1] * 100)}]"
    se = "n/a" if s["se"] is None else f"{s['se'] * 100:.2f} pp"
    m, mde = s["mcnemar"], s["mde"]
    mde_text = "n/a" if mde["value"] is None else f"{mde['value'] * 100:.1f} pp"
    return [
        *lines,
        f"- Delta: **{signed(s['delta'] * 100)} pp**, {interval} (delta +/- z*SE, z = {s['z']:.3f})",
        f"- SE: {se}, {s['se_method']} (`{s['se_formula']}`, ddof=1), "
        f"{s['n']} pairs in {s['clusters']} source runs",
        f"- McNemar exact: A only {m['a_only']}, B only {m['b_only']}, both {m['both']}, "
        f"neither {m['neither']}; p = {m['p_value']:.4g}" + (f" ({m['note']})" if m["note"] else ""),
        f"- MDE at 80% power, alpha 0.05 two-sided: {mde_text} (`{mde['formula']}`; discordance "
        f"{pct(mde['discordance_rate'])}, design effect {mde['design_effect']:.2f})",
        "",
    ]


def delta_lines(report: dict[str, Any]) -> list[str]:
    d = report["deltas"]
    lines = ["## Token and cost deltas (B - A per pair)", ""]
    if d is None:
        return [*lines, f"No delta: {report['note']}", ""]
    t, c, boot = d["tokens"], d["cost_usd"], d["bootstrap"]
    t_mean, t_med = t["mean_ci95"], t["median_ci95"]
    return [
        *lines,
        "| | mean [95% CI] | median [95% CI] |",
        "|---|---:|---:|",
        f"| total tokens | {signed(t['mean'])} [{signed(t_mean[0])}, {signed(t_mean[1])}] "
        f"| {signed(t['median'])} [{signed(t_med[0])}, {signed(t_med[1])}] |",
        f"| cost USD | {c['mean']} [{c['mean_ci95'][0]}, {c['mean_ci95'][1]}] "
        f"| {c['median']} [{c['median_ci95'][0]}, {c['median_ci95'][1]}] |",
        "",
        f"Intervals: cluster bootstrap, {boot['resamples']:,} resamples of {boot['clusters']} source runs "
        f"with replacement, {boot['interval']}, seed {boot['seed']}.",
        "",
    ]


def excluded_lines(report: dict[str, Any]) -> list[str]:
    ex = report["excluded"]
    lines = [f"## Excluded pairs ({ex['count']})", ""]
    if not ex["pairs"]:
        return [*lines, "None.", ""]
    reasons = [f"- {cell(reason)}: {n}" for reason, n in ex["by_reason"].items()]
    rows = [
        f"| {p['source_run_id']} | {p['sample']} | {p['a_run_id'] or '-'} | {p['b_run_id'] or '-'} "
        f"| {p['kind']} | {cell(p['reason'])} |"
        for p in ex["pairs"][:EXCLUDED_ROWS]
    ]
    more = len(ex["pairs"]) - EXCLUDED_ROWS
    tail = [f"... and {more} more not shown.", ""] if more > 0 else []
    table = ["| source run | sample | A run | B run | kind | reason |", "|---:|---:|---:|---:|---|---|"]
    return [*lines, *reasons, "", *table, *rows, "", *tail]


def render_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown document."""
    verdict = ["## Verdict", "", f"**{report['verdict']}**", ""]
    sections = [
        header_lines(report),
        counts_lines(report),
        arms_lines(report),
        success_lines(report),
        delta_lines(report),
        verdict,
        excluded_lines(report),
    ]
    return "\n".join(line for section in sections for line in section)


# ---------------------------------------------------------------- SVG

WIDTH, HEIGHT = 720, 360
TOP, BOTTOM = 50.0, 290.0
BAR_LEFT, BAR_RIGHT = 60.0, 330.0
SCATTER_LEFT, SCATTER_RIGHT = 430.0, 690.0
COLOURS = {"a": "#4c72b0", "b": "#dd8452"}


def text(x: float, y: float, content: str, *, size: int = 12, anchor: str = "middle", extra: str = "") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
        f"{escape(content)}</text>"
    )


def short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def y_of_rate(rate: float) -> float:
    return BOTTOM - rate * (BOTTOM - TOP)


def bar(arm_key: str, arm: dict[str, Any], x: float, width: float) -> list[str]:
    """One arm's bar, its CI whisker (when there is one) and its labels."""
    rate, ci = arm["success_rate"], arm["success_ci95"]
    centre = x + width / 2
    parts = [text(centre, BOTTOM + 16, f"Arm {arm_key.upper()}", extra=' font-weight="bold"')]
    if rate is None:
        return [*parts, text(centre, BOTTOM - 8, "n/a")]
    top = y_of_rate(rate)
    parts.append(
        f'<rect x="{x:.1f}" y="{top:.1f}" width="{width:.1f}" height="{BOTTOM - top:.1f}" '
        f'fill="{COLOURS[arm_key]}"><title>{escape(arm["label"])}</title></rect>'
    )
    if ci is not None:
        low, high = y_of_rate(ci[0]), y_of_rate(ci[1])
        parts.append(
            f'<path d="M{centre:.1f},{low:.1f}V{high:.1f}M{centre - 8:.1f},{low:.1f}h16'
            f'M{centre - 8:.1f},{high:.1f}h16" stroke="#222" stroke-width="1.5" fill="none"/>'
        )
    label_y = min(top, y_of_rate(ci[1]) if ci else top) - 6
    return [*parts, text(centre, label_y, f"{rate * 100:.1f}%")]


def rate_axis() -> list[str]:
    parts = [f'<path d="M{BAR_LEFT:.1f},{TOP:.1f}V{BOTTOM:.1f}H{BAR_RIGHT:.1f}" stroke="#444" fill="none"/>']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y_of_rate(tick)
        parts.append(f'<path d="M{BAR_LEFT - 4:.1f},{y:.1f}h4" stroke="#444"/>')
        parts.append(text(BAR_LEFT - 7, y + 4, f"{tick * 100:.0f}%", size=10, anchor="end"))
    return parts


def bars_panel(report: dict[str, Any]) -> list[str]:
    arms = report["arms"]
    campaign = report["campaign"]
    width = 70.0
    legend = [
        text(20, 318, f"A: {short(campaign['arm_a'])}", size=11, anchor="start"),
        text(20, 334, f"B: {short(campaign['arm_b'])}", size=11, anchor="start"),
    ]
    return [
        text(195, 28, "Success rate (95% Wilson CI)", size=14),
        *rate_axis(),
        *bar("a", arms["a"], 110.0, width),
        *bar("b", arms["b"], 230.0, width),
        *legend,
    ]


def cost_range(points: Sequence[Sequence[float]]) -> tuple[float, float]:
    """Common axis range for both costs, from 0 (or below, if any cost is negative); never empty."""
    values = [v for point in points for v in point]
    low = min([0.0, *values])
    high = max([low, *values])
    return (low, high) if high > low else (low, low + 1.0)


def scatter_xy(point: Sequence[float], low: float, high: float) -> tuple[float, float]:
    span = high - low
    x = SCATTER_LEFT + (point[0] - low) / span * (SCATTER_RIGHT - SCATTER_LEFT)
    y = BOTTOM - (point[1] - low) / span * (BOTTOM - TOP)
    return x, y


def scatter_axes(low: float, high: float) -> list[str]:
    left, right = SCATTER_LEFT, SCATTER_RIGHT
    middle = (left + right) / 2
    return [
        f'<path d="M{left:.1f},{TOP:.1f}V{BOTTOM:.1f}H{right:.1f}" stroke="#444" fill="none"/>',
        f'<path d="M{left:.1f},{BOTTOM:.1f}L{right:.1f},{TOP:.1f}" stroke="#999" stroke-dasharray="4 3"/>',
        text(right - 4, TOP + 12, "y = x", size=10, anchor="end"),
        text(left, BOTTOM + 14, f"{low:.4g}", size=10),
        text(right, BOTTOM + 14, f"{high:.4g}", size=10),
        text(left - 6, BOTTOM, f"{low:.4g}", size=10, anchor="end"),
        text(left - 6, TOP + 4, f"{high:.4g}", size=10, anchor="end"),
        text(middle, BOTTOM + 30, "Arm A cost per run (USD)", size=11),
        text(left - 40, (TOP + BOTTOM) / 2, "Arm B cost per run (USD)", size=11, extra=_rotated(left - 40)),
    ]


def _rotated(x: float) -> str:
    return f' transform="rotate(-90 {x:.1f} {(TOP + BOTTOM) / 2:.1f})"'


def scatter_panel(report: dict[str, Any]) -> list[str]:
    scatter = report["pairs_scatter"]
    points = scatter["points"]
    low, high = cost_range(points)
    subtitle = f"{scatter['shown']} of {scatter['total']} pairs" if scatter["subsampled"] else ""
    parts = [text(560, 28, "Cost per pair: B against A", size=14), *scatter_axes(low, high)]
    if subtitle:
        parts.append(text(560, 42, subtitle, size=10))
    if not points:
        parts.append(text(560, (TOP + BOTTOM) / 2, "no valid pairs", size=12))
    for point in points:
        x, y = scatter_xy(point, low, high)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#4c72b0" fill-opacity="0.5"/>')
    return parts


def render_svg(report: dict[str, Any]) -> str:
    """One standalone SVG: success bars with CI whiskers, and the per-pair cost scatter."""
    body = [*bars_panel(report), *scatter_panel(report)]
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">',
            f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
            *body,
            "</svg>",
            "",
        ]
    )
