"""The participant report: ``OUTPUT_DIR/<bids_name>.html``, one self-contained file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from ..schema import column
from .render import fmt, render


def _metric_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, value in metrics.items():
        try:
            col = column(name)
            unit, desc = col.unit, col.description
        except ValueError:
            unit, desc = "", ""
        rows.append({"name": name, "value": fmt(value), "unit": unit, "description": desc})
    return rows


def write_participant_report(result: dict[str, Any], output_dir: Path) -> Path:
    """Write the HTML report of one participant JSON and return its path."""
    html = render(
        "participant.html.j2",
        result=result,
        metric_rows=_metric_rows(result["metrics"]),
        status="failed" if result["qc_error"] else "ok",
    )
    out = Path(output_dir) / f"{result['bids_name']}.html"
    atomic_write_text(out, html)
    return out
