"""`search report DIR`: one self-contained HTML page (plus its PNGs) that says what a run found.

Reads only what a run leaves in its directory: results.parquet, confirm.parquet (the held-out
stage), summary.json, space.yaml and Optuna's journal. Figures are matplotlib PNGs written to
`DIR/report/` and inlined into `DIR/report.html` as data URIs, so the page can be mailed or
attached on its own. The page is a Jinja2 template (search/outcome/templates/report.html).
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import jinja2
import pyarrow.parquet as pq

from search.errors import UserError
from search.outcome.export import write_text
from search.outcome.figures import (
    accuracy_vs_memory,
    asha_rungs,
    display_param,
    held_out_chart,
    importance_chart,
    importances,
    knob_labels,
    learning_curves,
    objective_by_choice,
)
from search.outcome.front import pareto_front
from search.outcome.results import ranked, scored
from search.plan.space import load_space

TOP_K = 10
TEMPLATE = Path(__file__).parent / "templates" / "report.html"


class ReportError(UserError, ValueError):
    """A directory that holds no finished run."""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def fmt(value: Any, spec: str = ".4f") -> str:
    if value is None or isinstance(value, jinja2.Undefined) or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def knob_cell(value: Any) -> str:
    return ("yes" if value else "no") if isinstance(value, bool) else ("–" if value is None else str(value))


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist() if path.exists() else []


def write_report(run_dir: Path) -> Path:
    """Render DIR/report.html and DIR/report/*.png from a finished run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "results.parquet").is_file() or not (run_dir / "space.yaml").is_file():
        raise ReportError(f"report {run_dir}: holds no finished run (results.parquet and space.yaml expected)")
    space = load_space(run_dir / "space.yaml")
    rows = read_rows(run_dir / "results.parquet")
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    figures_dir = run_dir / "report"
    figures_dir.mkdir(exist_ok=True)

    front = pareto_front(rows)
    best = next((r for r in rows if r["trial_id"] == summary.get("best_trial")), None) or next(iter(ranked(rows)), None)
    figures: dict[str, Path] = {}
    baselines = summary.get("baselines") or []
    if scored(rows):
        figures["scatter"] = accuracy_vs_memory(rows, front, best, figures_dir / "accuracy_vs_memory.png", baselines)
        figures["by_choice"] = objective_by_choice(rows, figures_dir / "objective_by_choice.png")
        figures["curves"] = learning_curves(rows, space, figures_dir / "learning_curves.png")
    scores, importance_note = importances(space, run_dir)
    if scores:
        figures["importances"] = importance_chart(scores, figures_dir / "importances.png")
    held_out = summary.get("held_out") or {}
    if held_out.get("methods"):
        figures["held_out"] = held_out_chart(held_out, figures_dir / "held_out.png")

    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent),
                                     autoescape=jinja2.select_autoescape(["html"]))
    environment.filters.update(fmt=fmt, param=display_param, knob=knob_cell)
    html = environment.get_template(TEMPLATE.name).render(
        space=space, rows=rows, summary=summary, best=best, front=front, top=ranked(rows)[:TOP_K],
        figures={name: data_uri(path) for name, path in figures.items()}, importances=scores,
        importance_note=importance_note, rungs=asha_rungs(space), knobs=knob_labels(),
        baselines=baselines, methods=held_out.get("methods") or [], comparisons=held_out.get("comparisons") or [],
        chips=held_out.get("chips") or [], shapes=held_out.get("shapes") or {},
        properties=summary.get("test_properties"), val_chips=set((summary.get("splits") or {}).get("val") or []),
        problems=[r for r in rows if r["status"] in ("failed", "infeasible")],
        statuses={s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})},
    )
    write_text(run_dir / "report.html", html)
    return run_dir / "report.html"


def report_command(args) -> int:
    """`python -m search report DIR`."""
    print(f"report: {write_report(args.run_dir)}")
    return 0
