"""The review queue and the flags table of the group level.

Risk score (documented in the group report): every check compares a value with a threshold;
its *ratio* is value / threshold for checks that fail above it (RegQC's RMSE, ShapeQC's
P(FAIL), a volume above the group's upper outlier bound) and threshold / value for checks
that fail below it (predicted Dice, a volume below the lower bound), so a ratio above 1 means
flagged and a larger ratio means further beyond the threshold. An image's risk is its
largest ratio; images whose processing failed come first (a person must look at them), images
without any check value last. An experimental model's check (below the real-data gate)
counts its ratio ``r`` below 1 and ``1 - 0.01 / r`` from 1 on: its flags keep their order
just below every gated check's flag.

Relative evidence: the dataset-relative robust z-scores (``rz_*``, :mod:`bids_qc.robust_z`)
add ``min(rz_max / 3.5, 1)``, where ``rz_max`` is the image's largest ``|z|``: an image's
risk is ``max(absolute risk, min(rz_max / 3.5, 1))``. The cap at 1 is the rule: a robust
outlier (``|z| > 3.5``, risk 1) ranks above every image no check flagged (risk below 1)
and below every image a check flagged (risk above 1), because the checks are validated
against ratings and a dataset-relative outlier is often true anatomy (a patient group) or
a shifted acquisition; below the cut-off, ``|z| / 3.5`` lifts unflagged images that sit far
out in their dataset above those that are merely near a threshold. Ties (e.g. every robust
outlier at 1) are broken by ``rz_max``, larger first, then by name. Model checks, their flags
and ``group_T1w_flagged.tsv`` do not read the scores. The queue is the images by decreasing
risk.

Where truth is known (ratings, or the demo's planted failures, in ``ratings_T1w.tsv``), the
share to review for a recall is the fraction of the rated images a rater reads, top down,
until that share of the truly failing ones is caught. Ties count against the queue: the rater
reads every image tied with the last one needed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .reports.checks import (
    MAX_RATIO,
    CheckSpec,
    check_spec,
    is_check,
    model_checks,
    run_thresholds,
)
from .robust_z import OUTLIER_Z
from .schema import RZ_COLUMNS
from .structures import STRUCTURE_NAMES

#: Recalls whose share to review the group report shows.
RECALLS = (0.8, 0.9)
FLAGGED_COLUMNS = ["bids_name", "check", "value", "threshold"]
#: Columns of ``group_T1w_queue.tsv``, the whole review queue in order (``rz_max``: the
#: image's largest ``|z|`` of the ``rz_*`` scores, last so that older readers keep working).
QUEUE_COLUMNS = ["rank", "bids_name", "risk", "flags", "qc_error", "rz_max"]
#: The most the relative evidence adds to the risk: 1, just below any flagged image.
RELATIVE_CAP = 1.0
#: The checks table; ``row`` is the image's position in the group table (fast grouping).
_CHECK_COLUMNS = ["bids_name", "check", "value", "threshold", "flag", "ratio", "row"]


def _numeric(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """``frame[columns]`` as floats (images x columns), NaN where missing or not finite."""
    if not columns:
        return np.full((len(frame), 0), np.nan)
    out = np.column_stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(
        dtype=float, na_value=np.nan) for c in columns])
    out[~np.isfinite(out)] = np.nan
    return out


def _check_values(frame: pd.DataFrame, spec: CheckSpec) -> np.ndarray:
    """Per image, the value :meth:`CheckSpec.value` reads from its metrics (NaN: none)."""
    if not spec.metric.endswith("*"):
        if spec.metric not in frame:
            return np.full(len(frame), np.nan)
        return _numeric(frame, [spec.metric])[:, 0]
    prefix = spec.metric[:-1]
    cols = [c for c in frame.columns if c.startswith(prefix) and c != prefix + "mean"]
    values = _numeric(frame, cols)
    with warnings.catch_warnings():  # all-NaN rows: NaN, then the mean below
        warnings.simplefilter("ignore", RuntimeWarning)
        low = np.nanmin(values, axis=1) if cols else np.full(len(frame), np.nan)
    if prefix + "mean" in frame:
        low = np.where(np.isnan(low), _numeric(frame, [prefix + "mean"])[:, 0], low)
    return low


def _check_thresholds(spec: CheckSpec, keys: np.ndarray,
                      sets: list[dict[str, float]]) -> np.ndarray:
    """Per image, the threshold :func:`bids_qc.reports.checks.evaluate` uses.

    ``sets`` are the distinct threshold sets of the group and ``keys`` each image's index
    into them (a group's images share one or a few sets).
    """
    def one(found: dict[str, float]) -> float:
        value = found.get(spec.threshold_key)
        if value is None and spec.fallback_key:
            value = found.get(spec.fallback_key)
        return spec.default if value is None else value

    return np.array([one(found) for found in sets], dtype=float)[keys]


def _threshold_sets(results: list[dict[str, Any]], names: list[str]
                    ) -> tuple[np.ndarray, list[dict[str, float]]]:
    """The distinct run thresholds of a group, and per image (in ``names`` order) its set."""
    index: dict[tuple, int] = {}
    by_name = {}
    for res in results:
        found = run_thresholds(res)
        by_name[res["bids_name"]] = index.setdefault(tuple(sorted(found.items())), len(index))
    empty = index.setdefault((), len(index))
    keys = np.array([by_name.get(n, empty) for n in names], dtype=int)
    return keys, [dict(k) for k in index]


def model_check_table(results: list[dict[str, Any]], frame: pd.DataFrame) -> pd.DataFrame:
    """One row per image and model check: value, threshold, flag, ratio.

    The same verdicts as :func:`bids_qc.reports.checks.evaluate` on each JSON, computed per
    check over the group table's columns (a loop over images costs minutes at 100,000).
    An image gets a row for a check where it has the check's value or flag.
    """
    names = frame["bids_name"].to_numpy(dtype=object)
    keys, sets = _threshold_sets(results, names.tolist())
    parts = []
    for spec in model_checks({c: 0.0 for c in frame.columns}):
        value = _check_values(frame, spec)
        flag = (_numeric(frame, [spec.flag])[:, 0] if spec.flag in frame
                else np.full(len(frame), np.nan))
        keep = ~(np.isnan(value) & np.isnan(flag))
        if not keep.any():
            continue
        value, flag = value[keep], flag[keep]
        threshold = _check_thresholds(spec, keys[keep], sets)
        fails = value > threshold if spec.direction == "above" else value < threshold
        flag = np.where(np.isnan(flag) & ~np.isnan(value), fails, flag)
        num, den = (value, threshold) if spec.direction == "above" else (threshold, value)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(den <= 0, np.where(num > 0, MAX_RATIO, 0.0),
                             np.clip(num / den, 0.0, MAX_RATIO))
        ratio[np.isnan(value)] = np.nan
        parts.append(pd.DataFrame({
            "bids_name": names[keep], "check": spec.flag, "value": value,
            "threshold": threshold, "flag": flag, "ratio": ratio,
            "row": np.flatnonzero(keep)}))
    if not parts:
        return pd.DataFrame(columns=_CHECK_COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values("row", kind="stable").reset_index(drop=True)[_CHECK_COLUMNS]


def outlier_check_table(frame: pd.DataFrame, bounds: dict[str, tuple[float, float]]
                        ) -> pd.DataFrame:
    """One row per image and volume-outlier flag, with the bound it is compared with.

    Vectorised per column: at 100,000 images x 20 volumes a row-by-row loop takes seconds.
    """
    parts = []
    for name in STRUCTURE_NAMES:
        col, flag_col = f"vol_{name}", f"vol_{name}_outlier"
        if col not in bounds or flag_col not in frame:
            continue
        low, high = bounds[col]
        value = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
        flag = frame[flag_col].to_numpy(dtype=float, na_value=np.nan)
        keep = ~(np.isnan(value) | np.isnan(flag))
        value, flag = value[keep], flag[keep]
        with np.errstate(divide="ignore", invalid="ignore"):
            below = np.where(value > 0, low / value, MAX_RATIO if low > 0 else 0.0)
            above = value / high if high > 0 else np.zeros_like(value)
        parts.append(pd.DataFrame({
            "row": np.flatnonzero(keep),
            "bids_name": frame["bids_name"].to_numpy(dtype=object)[keep], "check": flag_col,
            "value": value, "threshold": np.where(below >= above, low, high),
            "flag": flag.astype(int), "ratio": np.minimum(MAX_RATIO, np.maximum(below, above)),
        }))
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=_CHECK_COLUMNS)
    return pd.concat(parts, ignore_index=True)[_CHECK_COLUMNS]


def flagged_table(checks: pd.DataFrame) -> pd.DataFrame:
    """``group_T1w_flagged.tsv``: one row per flagged image and check."""
    flagged = checks[checks["flag"] == 1]
    return flagged[FLAGGED_COLUMNS].sort_values(["bids_name", "check"]).reset_index(drop=True)


def queue_table(queue: pd.DataFrame) -> pd.DataFrame:
    """``group_T1w_queue.tsv``: every image in review order (risk ``inf``: processing failed,
    ``n/a``: no check value; ``flags``: the checks that flagged it, comma-separated)."""
    out = queue[["rank", "bids_name", "risk", "qc_error", "rz_max"]].copy()
    out.insert(3, "flags", [",".join(f) for f in queue["flags"]])
    return out[QUEUE_COLUMNS]


def _experimental_checks(names: np.ndarray) -> np.ndarray:
    """Which rows of a checks table belong to an experimental model (below the gate)."""
    found = {n: is_check(n) and check_spec(n).experimental for n in set(names.tolist())}
    return np.array([found[n] for n in names.tolist()], dtype=bool)


def risk_scores(frame: pd.DataFrame, checks: pd.DataFrame) -> pd.Series:
    """bids_name -> risk (see the module docstring); inf for failed images, NaN without data.

    An experimental model's check (below the real-data gate) keeps a ratio ``r`` below 1
    and counts ``1 - 0.01 / r`` from 1 on: its flags rank in their own order just below any
    gated check's flag, never above it, since on real images they are mostly false.
    """
    risk = np.full(len(frame), -np.inf)
    ratio = checks["ratio"].to_numpy(dtype=float).copy()
    experimental = _experimental_checks(checks["check"].to_numpy(dtype=object))
    flagged = experimental & (ratio >= 1)
    ratio[flagged] = 1.0 - 0.01 / ratio[flagged]
    present = ~np.isnan(ratio)
    rows = checks["row"].to_numpy(dtype=np.int64)[present]
    np.maximum.at(risk, rows, ratio[present])
    risk[np.isneginf(risk)] = np.nan
    failed = frame["qc_error"].fillna("").astype(str).to_numpy(dtype=object) != ""
    risk[failed] = math.inf
    return pd.Series(risk, index=pd.Index(frame["bids_name"].to_numpy(dtype=object),
                                          name="bids_name"))


def largest_robust_z(frame: pd.DataFrame) -> np.ndarray:
    """Per image, its largest ``|z|`` over the ``rz_*`` columns of ``frame`` (NaN: none)."""
    cols = [c for c in RZ_COLUMNS.values() if c in frame]
    if not cols:
        return np.full(len(frame), np.nan)
    values = np.abs(_numeric(frame, cols))
    with warnings.catch_warnings():  # images without any score: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(values, axis=1)


def relative_risk(rz_max: np.ndarray) -> np.ndarray:
    """The relative evidence's share of the risk: ``min(rz_max / OUTLIER_Z, RELATIVE_CAP)``
    (NaN where an image has no score); see the module docstring."""
    return np.minimum(rz_max / OUTLIER_Z, RELATIVE_CAP)


def share_to_review(risk: pd.Series, truth: dict[str, bool], recall: float) -> float | None:
    """The share of the rated images to read, top down, to catch ``recall`` of the failing.

    None when no rated image fails.
    """
    rated = risk[risk.index.isin(list(truth))]
    bad = np.array([truth[n] for n in rated.index], dtype=bool)
    if not bad.any():
        return None
    # Missing risks sort last, as -inf; ties are read together.
    score = rated.fillna(-math.inf).to_numpy(dtype=float)
    need = math.ceil(recall * bad.sum() - 1e-9)
    bad_scores = np.sort(score[bad])[::-1]
    cutoff = bad_scores[need - 1]
    return float(np.count_nonzero(score >= cutoff) / len(score))


@dataclass
class Review:
    """What the group level tells a rater: the queue, the flags, and the queue's quality."""

    checks: pd.DataFrame
    queue: pd.DataFrame  # rank, bids_name, risk, row (in the group table), rz_max, flags,
    # qc_error, truth
    shares: dict[float, float | None] = field(default_factory=dict)
    n_rated: int = 0
    n_failing: int = 0


def build_review(results: list[dict[str, Any]], frame: pd.DataFrame,
                 bounds: dict[str, tuple[float, float]],
                 truth: dict[str, bool] | None = None) -> Review:
    """The review queue of a group.

    Parameters
    ----------
    results : list of dict
        The participant JSONs.
    frame : DataFrame
        The group table (:func:`bids_qc.group.group_table`).
    bounds : dict
        Volume column -> (lower, upper) outlier bound of the group.
    truth : dict, optional
        bids_name -> whether the image truly fails (ratings or planted truth).
    """
    parts = [t for t in (model_check_table(results, frame), outlier_check_table(frame, bounds))
             if not t.empty]
    checks = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=_CHECK_COLUMNS)
    absolute = risk_scores(frame, checks)
    rz_max = largest_robust_z(frame)
    # fmax: a missing side counts for nothing; a failed image's inf stays inf
    risk = pd.Series(np.fmax(absolute.to_numpy(dtype=float), relative_risk(rz_max)),
                     index=absolute.index)
    hits = checks[checks["flag"] == 1]
    flagged: dict[str, list[str]] = {}
    for name, check in zip(hits["bids_name"].to_numpy(dtype=object).tolist(),
                           hits["check"].to_numpy(dtype=object).tolist(), strict=True):
        flagged.setdefault(name, []).append(check)
    queue = pd.DataFrame({"bids_name": risk.index, "risk": risk.to_numpy(),
                          "row": np.arange(len(risk)), "rz_max": rz_max})
    queue["order"] = queue["risk"].fillna(-math.inf)
    queue["rz_order"] = queue["rz_max"].fillna(-math.inf)
    queue = queue.sort_values(["order", "rz_order", "bids_name"],
                              ascending=[False, False, True], kind="stable"
                              ).drop(columns=["order", "rz_order"]).reset_index(drop=True)
    queue.insert(0, "rank", np.arange(1, len(queue) + 1))
    names = queue["bids_name"].to_numpy(dtype=object).tolist()
    queue["flags"] = [flagged.get(n, []) for n in names]
    errors = dict(zip(frame["bids_name"].to_numpy(dtype=object).tolist(),
                      frame["qc_error"].fillna("").to_numpy(dtype=object).tolist(), strict=True))
    queue["qc_error"] = [errors.get(n, "") for n in names]
    truth = truth or {}
    queue["truth"] = [truth.get(n) for n in names]
    review = Review(checks, queue, n_rated=sum(n in truth for n in risk.index),
                    n_failing=sum(bool(truth.get(n)) for n in risk.index))
    if review.n_failing:
        review.shares = {r: share_to_review(risk, truth, r) for r in RECALLS}
    return review
