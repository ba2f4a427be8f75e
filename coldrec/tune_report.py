"""The HTML report of `coldrec tune`: the objective against the trial, the parameters'
importances (Optuna's default evaluator) and the table of trials. Self-contained: inline CSS
and SVG, no scripts."""

from __future__ import annotations

import html
from typing import Any

import optuna
import polars as pl

from coldrec.charts import CSS, html_table, svg_bar_chart, svg_line_chart


def importances(study: optuna.Study) -> dict[str, float]:
    """{config key: importance} over the complete trials; {} while there are too few."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):  # e.g. every complete trial drew the same setting
        return {}


def render_report(study: optuna.Study, trials: pl.DataFrame, scenarios: tuple[str, ...], best: optuna.trial.FrozenTrial | None) -> str:
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>coldrec tune</title>",
        f"<style>{CSS}</style></head><body>", "<h1>coldrec tune</h1>",
        f'<p class="meta">objective: mean validation Recall of {html.escape(", ".join(scenarios))} · '
        f"{len(study.trials)} trial(s), {len(complete)} complete</p>",
    ]
    if best is not None:
        parts += [f"<h2>Best: trial {best.number}, {best.value:.4f}</h2>",
                  html_table(["key", "value"], [[key, _text(value)] for key, value in best.params.items()])]
    plots = [svg_line_chart("Objective by trial", [t.number for t in complete], [float(t.value) for t in complete],
                            [best.number] if best else [], x_label="trial", mark_label="trial {x}")]
    weights = importances(study)
    if weights:
        plots.append(svg_bar_chart("Parameter importance", [key.split(".")[-1] for key in weights], {"importance": list(weights.values())}))
    parts += ["<h2>Search</h2>", '<div class="plots">', *plots, "</div>"]
    if not weights:
        parts.append('<p class="meta">importances need at least two complete trials with different settings</p>')
    if trials.height:
        parts += ["<h2>Trials</h2>", html_table(trials.columns, [[_text(v) for v in row] for row in trials.iter_rows()])]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _text(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
