"""Self-contained HTML pieces for the reports (`coldrec evaluate --report`, `coldrec tune`):
inline CSS and SVG charts, no scripts, no external assets."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence


PALETTE = ("#3b6ea5", "#e07b39", "#4f9a5c", "#b94a5a", "#7d62a8", "#8c6d46")

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f4f7; }
.meta { color: #555; font-size: 0.9em; } .plots { display: flex; flex-wrap: wrap; gap: 1.5em; }
svg text { font-family: inherit; font-size: 12px; fill: #333; }
code { background: #f2f4f7; padding: 0 0.2em; }
"""


def nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        top = step * 10**exponent
        if top >= value:
            return top
    return 10 ** (exponent + 1)


def svg_bar_chart(title: str, categories: Sequence[str], series: dict[str, Sequence[float | None]]) -> str:
    """Grouped vertical bars: one group per category, one bar per series."""
    width, height = 520, 300
    left, right, top, bottom = 55, 15, 35, 55
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for values_ in series.values() for v in values_ if v is not None]
    y_max = nice_max(max(values) if values else 0.0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    out.append(f'<text x="{width / 2}" y="18" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>')
    for i in range(5):
        value = y_max * i / 4
        y = top + plot_h - plot_h * i / 4
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    group_w = plot_w / max(len(categories), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for c, category in enumerate(categories):
        x0 = left + c * group_w + group_w * 0.1
        for s, (name, values_) in enumerate(series.items()):
            value = values_[c]
            x = x0 + s * bar_w
            if value is None:
                out.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h - 4}" text-anchor="middle">–</text>')
                continue
            bar_h = plot_h * value / y_max
            out.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - bar_h:.1f}" width="{bar_w * 0.92:.1f}" height="{bar_h:.1f}" '
                f'fill="{PALETTE[s % len(PALETTE)]}"><title>{html.escape(name)} {html.escape(category)}: {value:.4f}</title></rect>'
            )
            if bar_w >= 26:  # room for the value printed above the bar
                out.append(
                    f'<text x="{x + bar_w * 0.46:.1f}" y="{top + plot_h - bar_h - 3:.1f}" text-anchor="middle" '
                    f'font-size="10">{value:.3f}</text>'
                )
        out.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{html.escape(category)}</text>'
        )
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#555"/>')
    legend_step = min(110.0, plot_w / max(len(series), 1))
    for s, name in enumerate(series):
        x = left + s * legend_step
        y = height - 14
        out.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{PALETTE[s % len(PALETTE)]}"/>')
        out.append(f'<text x="{x + 16}" y="{y}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def svg_line_chart(title: str, xs: Sequence[int], ys: Sequence[float], marks: Sequence[int], *, x_label: str = "k", mark_label: str = "recall@{x}") -> str:
    """ys against xs (ascending), with labelled dots at the xs in `marks`
    (`mark_label` names a dot: "recall@{x}" for Recall@k against k)."""
    width, height = 520, 300
    left, right, top, bottom = 55, 20, 35, 45
    plot_w, plot_h = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    out.append(f'<text x="{width / 2}" y="18" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>')
    if not xs:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>')
        return "\n".join(out)
    x_min, x_max = min(xs), max(xs)
    y_max = nice_max(max(ys) if ys else 0.0)

    def px(x: float) -> float:
        return left + plot_w * (x - x_min) / max(x_max - x_min, 1)

    def py(y: float) -> float:
        return top + plot_h - plot_h * y / y_max

    for i in range(5):
        value = y_max * i / 4
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(value):.1f}" y2="{py(value):.1f}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 6}" y="{py(value) + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    for x in sorted({x_min, *[k for k in marks if x_min <= k <= x_max], x_max}):
        out.append(f'<text x="{px(x):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{x}</text>')
    # At most ~500 points keep the file small for long lists.
    step = max(1, len(xs) // 500)
    points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in list(zip(xs, ys))[::step] + [(xs[-1], ys[-1])])
    out.append(f'<polyline points="{points}" fill="none" stroke="{PALETTE[0]}" stroke-width="2"/>')
    at = dict(zip(xs, ys))
    for k in marks:
        if k in at:
            y = at[k]
            out.append(
                f'<circle cx="{px(k):.1f}" cy="{py(y):.1f}" r="4" fill="{PALETTE[1]}"><title>{html.escape(mark_label.format(x=k))}: {y:.4f}</title></circle>'
            )
            # A label near the right edge ends left of its dot, so the SVG never clips it.
            anchor = 'text-anchor="end"' if px(k) > left + 0.85 * plot_w else 'text-anchor="start"'
            x_text = px(k) - 6 if "end" in anchor else px(k) + 6
            out.append(f'<text x="{x_text:.1f}" y="{py(y) - 6:.1f}" {anchor}>{y:.3f}</text>')
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#555"/>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">{html.escape(x_label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
