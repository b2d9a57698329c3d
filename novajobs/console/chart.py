"""A job's recent runs as a small server-side SVG: one bar per run, oldest on the left,
its height the run's duration (against the longest shown), its colour the outcome.
Each bar has a tooltip (<title>) with its start, outcome and duration."""

from __future__ import annotations

from html import escape
from typing import Any

WIDTH, HEIGHT, GAP = 180, 36, 1

# Dark enough for white text on a badge (contrast 4.5:1 or near); an operator's stop
# (interrupted) is not a failure's red.
COLOURS = {
    "success": "#2e7d32", "nothing_to_do": "#558b2f", "dry_run": "#1565c0",
    "running": "#8d6e00", "skipped": "#616161", "problem_found": "#c43e00",
    "interrupted": "#5d4037",
}
FAILED = "#c62828"
BADGE_COLOURS = {**COLOURS, "failed": FAILED, "stale": "#6a1b9a", "never_run": "#757575"}


def colour(outcome: str | None) -> str:
    return COLOURS.get(outcome or "", FAILED)


def runs_svg(runs: list[dict[str, Any]], label: str) -> str:
    """``runs`` newest first, as the history lists them."""
    if not runs:
        return '<span class="muted">no runs</span>'
    points = list(reversed(runs))
    longest = max((p["duration_ms"] or 0) for p in points) or 1
    bar = max((WIDTH - GAP * (len(points) - 1)) / max(len(points), 12), 2.0)
    bars = []
    for i, p in enumerate(points):
        ms = p["duration_ms"] or 0
        height = max(HEIGHT * ms / longest, 3.0)
        skips = f" x{p['skips']}" if (p.get("skips") or 0) > 1 else ""
        took = "running" if p["duration_ms"] is None else f"{ms / 1000:.2f} s"
        title = f"{p['started_at'] or '?'}  {p['outcome']}{skips}  {took}"
        bars.append(
            f'<rect x="{i * (bar + GAP):.1f}" y="{HEIGHT - height:.1f}" width="{bar:.1f}" '
            f'height="{height:.1f}" fill="{colour(p["outcome"])}" '
            f'data-outcome="{escape(str(p["outcome"]))}"><title>{escape(title)}</title></rect>'
        )
    return (f'<svg class="chart" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} '
            f'{HEIGHT}" role="img" aria-label="{escape(label)}">{"".join(bars)}</svg>')
