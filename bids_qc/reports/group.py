"""The group report ``OUTPUT_DIR/group_T1w.html``: strip and box plots, and the review queue.

The plots are drawn in the page from compact JSON (an inline SVG per metric, built by
``templates/group.js``): at 5,000 images a pre-drawn SVG with one link per point would
weigh tens of MB. Each point links to its participant report (``<bids_name>.html`` beside
the group report). Only points flagged by the metric's own check are coloured (red):
colouring the images another check flagged too turned every point orange on groups where
one check flags most images, and colour then said nothing. The axis and its ticks are
computed here (:func:`axis_ticks`), so the page only places them.

Large groups (more than :data:`STRIP_MAX_IMAGES` images) switch to an aggregate view, so
that the page stays a few MB at 100,000 images: each metric gets a histogram and a box of
*every* image, and points only for the :data:`SHOWN_RISKIEST` riskiest images of the review
queue (failed and flagged first) and an even, deterministic sample of
:data:`SHOWN_SAMPLE` others; the queue table shows its first :data:`QUEUE_MAX_ROWS` rows.
The TSVs always hold every image and every flag.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..review import RECALLS, Review
from ..robust_z import MIN_IMAGES, OUTLIER_Z
from ..schema import COLUMNS
from .checks import CheckSpec, check_spec, is_check
from .render import fmt, render

#: Above this many images the plots switch to histograms with a sample of points.
STRIP_MAX_IMAGES = 2000
#: In the aggregate view: the riskiest images always drawn, and how many others are sampled.
SHOWN_RISKIEST = 1000
SHOWN_SAMPLE = 1000
#: Bins of each metric's histogram in the aggregate view.
HIST_BINS = 40
#: Rows of the review queue in the page (``group_T1w_flagged.tsv`` and the group TSV hold all).
QUEUE_MAX_ROWS = 1000


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric columns to plot: the schema's float columns (but the descriptive ones: the
    IQMs' summary statistics), then models' extra ones."""
    schema = [c.name for c in COLUMNS
              if c.level == "participant" and c.kind == "float" and not c.descriptive]
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


def _check_of(col: str, check_names: list[str]) -> CheckSpec | None:
    """The model check whose value is ``col`` (or one of whose ``prefix*`` columns it is)."""
    for name in check_names:
        if not is_check(name):
            continue
        spec = check_spec(name)
        if spec.metric == col:
            return spec
        prefix = spec.metric[:-1] if spec.metric.endswith("*") else None
        if prefix and col.startswith(prefix) and col != prefix + "mean":
            return spec
    return None


def _own_flags(col: str, frame: pd.DataFrame, by_check: dict[str, pd.DataFrame]
               ) -> np.ndarray:
    """Per image, whether this metric's own check flags it.

    A volume's own check is its group outlier flag; a column a model check reads directly
    is flagged where that check flagged the image; a per-structure column of a ``prefix*``
    check (the lowest of them is the check's value) is flagged where it alone fails the
    image's threshold.
    """
    if f"{col}_outlier" in frame:
        return frame[f"{col}_outlier"].to_numpy(dtype=float, na_value=0) == 1
    spec = _check_of(col, list(by_check))
    out = np.zeros(len(frame), dtype=bool)
    if spec is None:
        return out
    rows = by_check[spec.flag]
    if spec.metric.endswith("*"):
        limit = np.full(len(frame), np.nan)
        limit[rows["row"].to_numpy(dtype=np.int64)] = rows["threshold"].to_numpy(dtype=float)
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            return (values > limit) if spec.direction == "above" else (values < limit)
    out[rows.loc[rows["flag"] == 1, "row"].to_numpy(dtype=np.int64)] = True
    return out


def _round(value: float) -> float | None:
    return None if not math.isfinite(value) else float(f"{value:.6g}")


def shown_images(frame: pd.DataFrame, review: Review) -> np.ndarray | None:
    """Row positions of the images drawn as points, or None for every image.

    Large groups: the :data:`SHOWN_RISKIEST` first of the review queue and an even sample
    of :data:`SHOWN_SAMPLE` of the others (the same on every run).
    """
    if len(frame) <= STRIP_MAX_IMAGES:
        return None
    riskiest = review.queue["row"].head(SHOWN_RISKIEST).to_numpy(dtype=np.int64)
    others = np.setdiff1d(np.arange(len(frame)), riskiest)
    take = np.unique(np.linspace(0, len(others) - 1, min(SHOWN_SAMPLE, len(others)))
                     .round().astype(int)) if len(others) else np.array([], dtype=int)
    return np.union1d(riskiest, others[take]).astype(int)


def axis_ticks(lo: float, hi: float, target: int = 5) -> tuple[float, float, list[list[Any]]]:
    """An axis over ``[lo, hi]`` widened to round ends, and its ticks.

    Parameters
    ----------
    lo, hi : float
        The data's range (equal values get a unit-wide axis).
    target : int
        About how many intervals the ticks should cut the axis into.

    Returns
    -------
    lo, hi : float
        The axis' ends: multiples of the tick step around the data.
    ticks : list of [float, str]
        Every tick from end to end (at least 3), with its label.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"an axis needs finite ends, not {lo}, {hi}")
    if hi <= lo:
        half = 0.5 * (abs(lo) or 1.0)
        lo, hi = lo - half, hi + half
    raw = (hi - lo) / target
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    if last - first < 2:  # keep a middle tick
        last = first + 2
    digits = max(0, -math.floor(math.log10(step) + 1e-9) + (1 if step / power == 2.5 else 0))
    ticks = [[_round(k * step), f"{k * step:,.{digits}f}"] for k in range(first, last + 1)]
    return ticks[0][0], ticks[-1][0], ticks


def _histogram(present: np.ndarray) -> dict[str, Any]:
    counts, edges = np.histogram(present, bins=HIST_BINS)
    return {"lo": _round(edges[0]), "hi": _round(edges[-1]), "counts": counts.tolist()}


def split_checks(checks: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The checks table split by check, in order of the check names (one factorisation of
    the names: at 100,000 images the table has millions of rows)."""
    codes, names = pd.factorize(checks["check"], sort=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    return {str(name): checks.iloc[order[bounds[k]:bounds[k + 1]]]
            for k, name in enumerate(names)}


def plot_data(frame: pd.DataFrame, review: Review,
              by_check: dict[str, pd.DataFrame] | None = None) -> dict[str, Any]:
    """The JSON the page draws from: names once, then per metric values, box, axis and flags.

    Only ``own`` (images the metric's own check flagged) is coloured in the page;
    ``flagged`` (images any check flagged) only feeds the tooltips. Boxes, axes, counts and
    histograms describe every image; ``values``, ``own`` and ``flagged``
    refer to the drawn images (``names``), every image below :data:`STRIP_MAX_IMAGES`.
    """
    checks = review.checks
    by_check = split_checks(checks) if by_check is None else by_check
    any_flag = np.zeros(len(frame), dtype=bool)
    any_flag[checks.loc[checks["flag"] == 1, "row"].to_numpy(dtype=np.int64)] = True
    shown = shown_images(frame, review)
    pick = slice(None) if shown is None else shown
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
        own = _own_flags(col, frame, by_check)
        lo, hi, ticks = axis_ticks(float(present.min()), float(present.max()))
        metric = {
            "name": col, "unit": unit, "n": int(present.size),
            "axis": [lo, hi], "ticks": ticks,
            "n_flagged": int(np.count_nonzero(own & np.isfinite(values))),
            "values": [_round(v) for v in values[pick]],
            "box": [_round(v) for v in (inside.min(), q1, med, q3, inside.max())],
            "own": np.flatnonzero(own[pick]).tolist(),
        }
        if shown is not None:
            metric["hist"] = _histogram(present)
        metrics.append(metric)
    names = frame["bids_name"].to_numpy(dtype=object)[pick].tolist()
    return {"names": names, "n_images": len(frame), "sampled": shown is not None,
            "flagged": np.flatnonzero(any_flag[pick]).tolist(),
            "metrics": metrics}


def _queue_rows(review: Review, limit: int = QUEUE_MAX_ROWS) -> list[dict[str, Any]]:
    rows, caught = [], 0
    for r in review.queue.head(limit).itertuples(index=False):
        caught += bool(r.truth)
        risk = "error" if r.risk == math.inf else fmt(None if pd.isna(r.risk) else r.risk)
        rows.append({"rank": r.rank, "bids_name": r.bids_name, "risk": risk,
                     "high": bool(r.risk > 1) if not pd.isna(r.risk) else False,
                     "flags": ", ".join(r.flags), "qc_error": r.qc_error,
                     "rz_max": "" if pd.isna(r.rz_max) else f"{r.rz_max:.1f}",
                     "rz_high": bool(r.rz_max > OUTLIER_Z) if not pd.isna(r.rz_max) else False,
                     "truth": {True: "FAIL", False: "PASS"}.get(r.truth, ""),
                     "caught": f"{100 * caught / review.n_failing:.0f}%"
                     if review.n_failing else ""})
    return rows


def _check_summary(by_check: dict[str, pd.DataFrame]) -> list[dict[str, Any]]:
    out = []
    for name, rows in by_check.items():
        spec = check_spec(name) if is_check(name) else None
        label = spec.label if spec else "volume outlier (group)"
        out.append({"check": name, "label": label,
                    "experimental": bool(spec and spec.experimental),
                    "n": int(rows["value"].notna().sum()),
                    "flagged": int((rows["flag"] == 1).sum())})
    return out


def render_group_report(frame: pd.DataFrame, review: Review, truth_file: Path | None = None,
                        truth_problem: str | None = None) -> str:
    """The group report's HTML."""
    by_check = split_checks(review.checks)
    data = plot_data(frame, review, by_check)
    shares = [{"recall": f"{100 * r:.0f}%",
               "share": "n/a" if review.shares.get(r) is None
               else f"{100 * review.shares[r]:.1f}%"} for r in RECALLS]
    return render(
        "group.html.j2",
        n_images=len(frame),
        min_rz_images=MIN_IMAGES,
        rz_cutoff=OUTLIER_Z,
        n_rz_outliers=int((frame["rz_noutliers"].fillna(0) > 0).sum())
        if "rz_noutliers" in frame else 0,
        n_failed=int((frame["qc_error"].fillna("") != "").sum()),
        data=data,
        queue=_queue_rows(review),
        n_queue=len(review.queue),
        n_shown=len(data["names"]),
        check_summary=_check_summary(by_check),
        shares=shares if review.n_failing else [],
        n_rated=review.n_rated,
        n_failing=review.n_failing,
        truth_file=truth_file.name if truth_file else None,
        truth_problem=truth_problem,
    )
