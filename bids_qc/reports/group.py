"""The group report ``OUTPUT_DIR/group_T1w.html``: strip and box plots, and the review queue.

The plots are drawn in the page from compact JSON (an inline SVG per metric, built by
``templates/group.js``): at 5,000 images a pre-drawn SVG with one link per point would
weigh tens of MB. Each point links to its participant report (``<bids_name>.html`` beside
the group report); points flagged by the metric's own check are red, points of images
flagged by another check orange.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..review import RECALLS, Review
from ..schema import COLUMNS
from .checks import check_spec, is_check
from .render import fmt, render


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric columns to plot: the schema's float columns, then models' extra ones."""
    schema = [c.name for c in COLUMNS if c.level == "participant" and c.kind == "float"]
    known = {c.name for c in COLUMNS}
    extra = [c for c in frame.columns if c not in known and not _is_flag(c)]
    out = []
    for col in schema + extra:
        values = pd.to_numeric(frame[col], errors="coerce")
        if values.notna().any():
            out.append(col)
    return out


def _is_flag(col: str) -> bool:
    return col.endswith(("_flag", "_outlier")) or "_flag_" in col


def _own_flags(col: str, frame: pd.DataFrame, checks: pd.DataFrame) -> pd.Series:
    """Per image, whether this metric's own check flags it."""
    false = pd.Series(False, index=frame.index)
    if f"{col}_outlier" in frame:
        return frame[f"{col}_outlier"].fillna(0).astype(int) == 1
    for prefix in ("segqc_dice_", "manifoldqc_dice_"):
        if col.startswith(prefix) and not col.endswith("_mean"):
            rows = checks[checks["check"] == prefix.replace("dice_", "flag")]
            thresholds = rows.set_index("bids_name")["threshold"]
            limit = frame["bids_name"].map(thresholds).astype(float)
            return pd.to_numeric(frame[col], errors="coerce") < limit
    flag = col.replace("shapeqc_pfail_", "shapeqc_flag_") if col.startswith(
        "shapeqc_pfail_") else ("regqc_flag" if col == "regqc_rmse_mm" else None)
    if flag is None:
        return false
    hit = set(checks.loc[(checks["check"] == flag) & (checks["flag"] == 1), "bids_name"])
    return frame["bids_name"].isin(hit)


def _round(value: float) -> float | None:
    return None if not math.isfinite(value) else float(f"{value:.6g}")


def plot_data(frame: pd.DataFrame, review: Review) -> dict[str, Any]:
    """The JSON the page draws from: names once, then per metric values, box and flags."""
    checks = review.checks
    any_flag = set(checks.loc[checks["flag"] == 1, "bids_name"])
    metrics = []
    for col in metric_columns(frame):
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
        present = values[np.isfinite(values)]
        if not present.size:
            continue
        q1, med, q3 = np.percentile(present, [25, 50, 75])
        iqr = q3 - q1
        inside = present[(present >= q1 - 1.5 * iqr) & (present <= q3 + 1.5 * iqr)]
        unit = next((c.unit for c in COLUMNS if c.name == col), "")
        metrics.append({
            "name": col, "unit": unit, "n": int(present.size),
            "values": [_round(v) for v in values],
            "box": [_round(v) for v in (inside.min(), q1, med, q3, inside.max())],
            "own": np.flatnonzero(_own_flags(col, frame, checks).to_numpy(bool)).tolist(),
        })
    return {"names": frame["bids_name"].tolist(),
            "flagged": [i for i, n in enumerate(frame["bids_name"]) if n in any_flag],
            "metrics": metrics}


def _queue_rows(review: Review) -> list[dict[str, Any]]:
    rows, caught = [], 0
    for r in review.queue.itertuples(index=False):
        caught += bool(r.truth)
        risk = "error" if r.risk == math.inf else fmt(None if pd.isna(r.risk) else r.risk)
        rows.append({"rank": r.rank, "bids_name": r.bids_name, "risk": risk,
                     "high": bool(r.risk > 1) if not pd.isna(r.risk) else False,
                     "flags": ", ".join(r.flags), "qc_error": r.qc_error,
                     "truth": {True: "FAIL", False: "PASS"}.get(r.truth, ""),
                     "caught": f"{100 * caught / review.n_failing:.0f}%"
                     if review.n_failing else ""})
    return rows


def _check_summary(review: Review) -> list[dict[str, Any]]:
    out = []
    checks = review.checks
    for name, rows in checks.groupby("check", sort=True):
        label = check_spec(name).label if is_check(name) else "volume outlier (group)"
        out.append({"check": name, "label": label, "n": int(rows["value"].notna().sum()),
                    "flagged": int((rows["flag"] == 1).sum())})
    return out


def render_group_report(frame: pd.DataFrame, review: Review, truth_file: Path | None = None,
                        truth_problem: str | None = None) -> str:
    """The group report's HTML."""
    shares = [{"recall": f"{100 * r:.0f}%",
               "share": "n/a" if review.shares.get(r) is None
               else f"{100 * review.shares[r]:.1f}%"} for r in RECALLS]
    return render(
        "group.html.j2",
        n_images=len(frame),
        n_failed=int((frame["qc_error"].fillna("") != "").sum()),
        data=plot_data(frame, review),
        queue=_queue_rows(review),
        check_summary=_check_summary(review),
        shares=shares if review.n_failing else [],
        n_rated=review.n_rated,
        n_failing=review.n_failing,
        truth_file=truth_file.name if truth_file else None,
        truth_problem=truth_problem,
    )
