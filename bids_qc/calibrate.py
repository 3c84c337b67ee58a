"""``bids_qc-calibrate OUTPUT_DIR --ratings ratings_T1w.tsv --recall 0.8``: thresholds.

For each check with rated images (a check is named by its flag column), the threshold is
the one that reaches the recall (share of the failing images flagged) while flagging the
fewest images, i.e. sending the fewest to review (the ENIGMA rule); ROC AUC says how well
the check's value separates failing from passing images at any threshold.

The thresholds file (one schema, shared with the thresholds ShapeQC ships)::

    {"format": "bids_qc-thresholds", "version": 1,
     "checks": {"regqc_flag": {"metric": "regqc_rmse_mm", "direction": "above",
                               "threshold": 7.9, "recall": 0.83, "review_fraction": 0.21,
                               "roc_auc": 0.95, "n": 120, "n_fail": 18}, ...}}

Only ``threshold`` is required per check; ``metric`` and ``direction``, when given, must
match the check. ``bids_qc ... participant --thresholds FILE`` reads it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, exitcodes
from .io import atomic_write_json
from .reports.checks import check_spec, evaluate

FORMAT = "bids_qc-thresholds"
VERSION = 1
THRESHOLDS_FILE = "thresholds_T1w.json"


@dataclass
class Calibration:
    """The calibrated threshold of one check, and how it does on the ratings."""

    metric: str
    direction: str
    threshold: float
    recall: float
    review_fraction: float
    roc_auc: float
    n: int
    n_fail: int


def roc_auc(scores: np.ndarray, bad: np.ndarray) -> float:
    """Probability that a failing image scores above a passing one (ties count half):
    scikit-learn's ROC AUC, the project's one AUC; NaN when ``bad`` has one class."""
    from sklearn.metrics import roc_auc_score

    bad = np.asarray(bad, dtype=bool)
    if bad.all() or not bad.any():
        return float("nan")
    return float(roc_auc_score(bad, np.asarray(scores, dtype=np.float64)))


def enigma_threshold(scores: np.ndarray, bad: np.ndarray, recall: float) -> float:
    """The cut on ``scores`` (flag when above) reaching ``recall`` with the fewest flagged.

    The cut lies halfway between the lowest failing score that must be caught and the next
    lower score, so ``>`` and ``>=`` flag the same images.
    """
    need = math.ceil(recall * bad.sum() - 1e-9)
    last = np.sort(scores[bad])[::-1][need - 1]
    lower = scores[scores < last]
    if lower.size:
        return float((last + lower.max()) / 2)
    return float(last - max(1e-6, 1e-3 * abs(last)))


def calibrate_check(flag: str, values: dict[str, float], truth: dict[str, bool],
                    recall: float) -> Calibration | str:
    """The calibration of one check, or the reason there is none."""
    spec = check_spec(flag)
    names = [n for n in truth if n in values]
    if not names:
        return "no rated image has a value for this check (did the model run?)"
    bad = np.array([truth[n] for n in names], dtype=bool)
    if bad.all() or not bad.any():
        return f"the {len(names)} rated image(s) are all {'FAIL' if bad.all() else 'PASS'}"
    sign = 1.0 if spec.direction == "above" else -1.0  # oriented: higher means worse
    scores = sign * np.array([values[n] for n in names], dtype=float)
    cut = enigma_threshold(scores, bad, recall)
    flagged = scores > cut
    return Calibration(spec.metric, spec.direction, sign * cut,
                       float(flagged[bad].mean()), float(flagged.mean()),
                       roc_auc(scores, bad), len(names), int(bad.sum()))


def calibrate(results: list[dict[str, Any]], ratings: list[dict[str, str]],
              recall: float) -> tuple[dict[str, Calibration], dict[str, str]]:
    """Calibrations of every rated check, and the reasons for checks left out."""
    from .ratings import failing

    values: dict[str, dict[str, float]] = {}
    for res in results:
        for o in evaluate(res):
            if o.value is not None:
                values.setdefault(o.spec.flag, {})[res["bids_name"]] = o.value
    truth: dict[str, dict[str, bool]] = {}
    for (name, check), bad in failing(ratings).items():
        truth.setdefault(check, {})[name] = bad
    done, skipped = {}, {}
    for check in sorted(truth):
        out = calibrate_check(check, values.get(check, {}), truth[check], recall)
        if isinstance(out, Calibration):
            done[check] = out
        else:
            skipped[check] = out
    return done, skipped


def thresholds_document(calibrations: dict[str, Calibration], recall: float) -> dict[str, Any]:
    """The thresholds file's content."""
    return {"format": FORMAT, "version": VERSION, "created_by": f"bids_qc-calibrate "
            f"{__version__}", "target_recall": recall,
            "checks": {k: asdict(v) for k, v in sorted(calibrations.items())}}


def read_thresholds(path: str | Path) -> dict[str, float]:
    """A thresholds file as ``Settings.thresholds`` entries (threshold key -> value).

    Raises
    ------
    ValueError
        If the file cannot be read or is not a valid thresholds file (names the file).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f'{path}: not a bids_qc thresholds file (needs "format": "{FORMAT}")')
    if data.get("version") != VERSION:
        raise ValueError(f"{path}: thresholds file version {data.get('version')!r} is not "
                         f"supported (this bids_qc reads version {VERSION})")
    checks = data.get("checks")
    if not isinstance(checks, dict) or not checks:
        raise ValueError(f'{path}: "checks" must map flag columns to {{"threshold": ...}}')
    out: dict[str, float] = {}
    for flag, entry in checks.items():
        try:
            spec = check_spec(flag)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        value = entry.get("threshold") if isinstance(entry, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise ValueError(f"{path}: checks.{flag}.threshold must be a finite number, got "
                             f"{value!r}")
        for key in ("metric", "direction"):
            if key in entry and entry[key] != getattr(spec, key):
                raise ValueError(f"{path}: checks.{flag}.{key} is {entry[key]!r}, but "
                                 f"{flag} uses {getattr(spec, key)!r}")
        out[spec.threshold_key] = float(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also the source of the documented option list)."""
    from .ratings import RATINGS_FILE

    parser = argparse.ArgumentParser(prog="bids_qc-calibrate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path, help="the bids_qc output dataset")
    parser.add_argument("--ratings", type=Path, default=None, metavar="TSV",
                        help=f"merged ratings (default: OUTPUT_DIR/{RATINGS_FILE})")
    parser.add_argument("--recall", type=float, default=0.8,
                        help="share of the failing images to flag (default 0.8)")
    parser.add_argument("--out", type=Path, default=None, metavar="JSON",
                        help=f"thresholds file to write (default: OUTPUT_DIR/{THRESHOLDS_FILE})")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (see the module docstring)."""
    from .group import find_result_files, load_results
    from .ratings import RATINGS_FILE, read_rating_file

    ns = build_parser().parse_args(argv)
    ratings_path = ns.ratings or ns.output_dir / RATINGS_FILE
    if not ratings_path.exists() and not ratings_path.is_absolute():
        ratings_path = ns.output_dir / ratings_path  # a name relative to OUTPUT_DIR
    try:
        if not 0 < ns.recall <= 1:
            raise ValueError(f"--recall must lie in (0, 1], got {ns.recall}")
        ratings = read_rating_file(ratings_path)
        results, problems = load_results(find_result_files(ns.output_dir))
        if not results:
            raise ValueError(f"{ns.output_dir}: no participant results; run bids_qc first")
    except ValueError as exc:
        print(f"bids_qc-calibrate: error: {exc}", file=sys.stderr)
        sys.exit(exitcodes.USAGE)
    done, skipped = calibrate(results, ratings, ns.recall)
    lines = ["| check | metric | threshold | recall | review share | ROC AUC | n | failing |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for flag, c in done.items():
        sign = ">" if c.direction == "above" else "<"
        lines.append(f"| {flag} | {c.metric} | {sign} {c.threshold:.4g} | {c.recall:.2f} | "
                     f"{c.review_fraction:.2f} | {c.roc_auc:.3f} | {c.n} | {c.n_fail} |")
    for flag, why in skipped.items():
        lines.append(f"| {flag} | not calibrated: {why} | | | | | | |")
    print("\n".join(lines))
    if not done:
        print("bids_qc-calibrate: error: no check could be calibrated (see above)",
              file=sys.stderr)
        sys.exit(exitcodes.DATA_ERROR)
    out = ns.out or ns.output_dir / THRESHOLDS_FILE
    atomic_write_json(out, thresholds_document(done, ns.recall))
    print(f"bids_qc-calibrate: thresholds saved to {out}; use them with "
          f"bids_qc ... participant --thresholds {out}")
    sys.exit(exitcodes.OK)
