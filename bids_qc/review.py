"""The review queue and the flags table of the group level.

Risk score (documented in the group report): every check compares a value with a threshold;
its *ratio* is value / threshold for checks that fail above it (RegQC's RMSE, ShapeQC's
P(FAIL), a volume above the group's upper outlier bound) and threshold / value for checks
that fail below it (predicted Dice, a volume below the lower bound), so a ratio above 1 means
flagged and a larger ratio means further beyond the threshold. An image's risk is its
largest ratio; images whose processing failed come first (a person must look at them), images
without any check value last. The queue is the images by decreasing risk (ties by name).

Where truth is known (ratings, or the demo's planted failures, in ``ratings_T1w.tsv``), the
share to review for a recall is the fraction of the rated images a rater reads, top down,
until that share of the truly failing ones is caught. Ties count against the queue: the rater
reads every image tied with the last one needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .reports.checks import MAX_RATIO, evaluate
from .structures import STRUCTURE_NAMES

#: Recalls whose share to review the group report shows.
RECALLS = (0.8, 0.9)
FLAGGED_COLUMNS = ["bids_name", "check", "value", "threshold"]
_CHECK_COLUMNS = ["bids_name", "check", "value", "threshold", "flag", "ratio"]


def model_check_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per image and model check: value, threshold, flag, ratio."""
    rows = [{"bids_name": res["bids_name"], "check": o.spec.flag, "value": o.value,
             "threshold": o.threshold, "flag": o.flag, "ratio": o.ratio}
            for res in results for o in evaluate(res)]
    return pd.DataFrame(rows, columns=_CHECK_COLUMNS)


def outlier_check_table(frame: pd.DataFrame, bounds: dict[str, tuple[float, float]]
                        ) -> pd.DataFrame:
    """One row per image and volume-outlier flag, with the bound it is compared with."""
    rows = []
    for name in STRUCTURE_NAMES:
        col, flag_col = f"vol_{name}", f"vol_{name}_outlier"
        if col not in bounds or flag_col not in frame:
            continue
        low, high = bounds[col]
        for bids_name, value, flag in zip(frame["bids_name"], frame[col], frame[flag_col],
                                          strict=True):
            if pd.isna(value) or pd.isna(flag):
                continue
            value = float(value)
            below = low / value if value > 0 else (MAX_RATIO if low > 0 else 0.0)
            above = value / high if high > 0 else 0.0
            threshold = low if below >= above else high
            rows.append({"bids_name": bids_name, "check": flag_col, "value": value,
                         "threshold": threshold, "flag": int(flag),
                         "ratio": min(MAX_RATIO, max(below, above))})
    return pd.DataFrame(rows, columns=_CHECK_COLUMNS)


def flagged_table(checks: pd.DataFrame) -> pd.DataFrame:
    """``group_T1w_flagged.tsv``: one row per flagged image and check."""
    flagged = checks[checks["flag"] == 1]
    return flagged[FLAGGED_COLUMNS].sort_values(["bids_name", "check"]).reset_index(drop=True)


def risk_scores(frame: pd.DataFrame, checks: pd.DataFrame) -> pd.Series:
    """bids_name -> risk (see the module docstring); inf for failed images, NaN without data."""
    risk = checks.dropna(subset=["ratio"]).groupby("bids_name")["ratio"].max()
    risk = risk.reindex(frame["bids_name"]).astype(float)
    failed = frame.set_index("bids_name")["qc_error"].fillna("").astype(str) != ""
    risk[failed.reindex(risk.index).to_numpy()] = math.inf
    return risk


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
    queue: pd.DataFrame  # rank, bids_name, risk, flagged checks, qc_error, truth
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
    parts = [t for t in (model_check_table(results), outlier_check_table(frame, bounds))
             if not t.empty]
    checks = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=_CHECK_COLUMNS)
    risk = risk_scores(frame, checks)
    flagged = checks[checks["flag"] == 1].groupby("bids_name")["check"].agg(list)
    queue = pd.DataFrame({"bids_name": risk.index, "risk": risk.to_numpy()})
    queue["order"] = queue["risk"].fillna(-math.inf)
    queue = queue.sort_values(["order", "bids_name"], ascending=[False, True],
                              kind="stable").drop(columns="order").reset_index(drop=True)
    queue.insert(0, "rank", np.arange(1, len(queue) + 1))
    queue["flags"] = [flagged.get(n, []) for n in queue["bids_name"]]
    errors = frame.set_index("bids_name")["qc_error"].fillna("")
    queue["qc_error"] = [errors.get(n, "") for n in queue["bids_name"]]
    truth = truth or {}
    queue["truth"] = [truth.get(n) for n in queue["bids_name"]]
    review = Review(checks, queue, n_rated=sum(n in truth for n in risk.index),
                    n_failing=sum(bool(truth.get(n)) for n in risk.index))
    if review.n_failing:
        review.shares = {r: share_to_review(risk, truth, r) for r in RECALLS}
    return review
