"""The QC checks: which flag column says what, from which value, against which threshold.

A *check* is named by its flag column (``regqc_flag``, ``segqc_flag``, ``manifoldqc_flag``,
``shapeqc_flag_<structure>``; at group level also ``vol_<structure>_outlier``). Reports,
the review queue, ratings and calibration all speak of checks by that name.

The flag a model wrote in the JSON is what counts; the threshold shown beside it is the one
in force when the image was processed (the run's ``thresholds`` option, recorded in the
fingerprint), else the model's default.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

Direction = Literal["above", "below"]

#: A ratio is capped here so that a Dice of 0 or a threshold of 0 still sorts (and prints).
MAX_RATIO = 100.0


@dataclass(frozen=True)
class CheckSpec:
    """How one check turns a value into a verdict.

    Parameters
    ----------
    flag : str
        The flag column (the check's name).
    metric : str
        The value column, or a ``prefix*`` whose per-structure columns are reduced by ``min``.
    threshold_key : str
        Key of ``Settings.thresholds`` (and of ``--thresholds`` files, through the flag).
    direction : {"above", "below"}
        ``above``: a value above the threshold fails (an error); ``below``: below fails
        (a Dice).
    default : float
        Threshold when the run recorded none.
    label : str
        What the check judges, for the reports.
    """

    flag: str
    metric: str
    threshold_key: str
    direction: Direction
    default: float
    label: str

    @property
    def model(self) -> str:
        """The model whose check this is (the flag column's prefix)."""
        return self.flag.split("_", 1)[0]

    @property
    def experimental(self) -> bool:
        """Whether the model is experimental (its card misses its targets): reports say so."""
        from ..models.registry import REGISTRY

        return any(s.name == self.model and s.experimental for s in REGISTRY)

    def value(self, metrics: dict[str, Any]) -> float | None:
        """The check's value in a participant's metrics (None when absent)."""
        if self.metric.endswith("*"):
            prefix = self.metric[:-1]
            values = [
                _num(v)
                for k, v in metrics.items()
                if k.startswith(prefix) and k != prefix + "mean"
            ]
            values = [v for v in values if v is not None]
            if values:
                return min(values)
            return _num(metrics.get(prefix + "mean"))
        return _num(metrics.get(self.metric))

    def fails(self, value: float, threshold: float) -> bool:
        """Whether ``value`` is on the failing side of ``threshold``."""
        return value > threshold if self.direction == "above" else value < threshold

    def ratio(self, value: float | None, threshold: float | None) -> float | None:
        """Value relative to threshold, oriented so that above 1 means failing."""
        if value is None or threshold is None:
            return None
        num, den = (value, threshold) if self.direction == "above" else (threshold, value)
        if den <= 0:
            return MAX_RATIO if num > 0 else 0.0
        return min(MAX_RATIO, max(0.0, num / den))


_FIXED = (
    CheckSpec(
        "regqc_flag",
        "regqc_rmse_mm",
        "regqc_rmse_mm",
        "above",
        10.0,
        "registration (RegQC predicted RMSE, mm)",
    ),
    CheckSpec(
        "segqc_flag",
        "segqc_dice_*",
        "segqc_dice",
        "below",
        0.7,
        "segmentation (SegQC lowest predicted Dice)",
    ),
    CheckSpec(
        "manifoldqc_flag",
        "manifoldqc_dice_*",
        "manifoldqc_dice",
        "below",
        0.7,
        "segmentation (ManifoldQC lowest predicted Dice)",
    ),
)


def _baseline_checks() -> tuple[CheckSpec, ...]:
    # The registration baselines check only where this installation ships fitted
    # thresholds (from real calibration images); a typed default would be a guess.
    from ..models.classic import baseline_thresholds

    fitted = baseline_thresholds()
    return tuple(
        CheckSpec(f"{name}_flag", name, name, "below", fitted[name],
                  f"registration ({'correlation' if name == 'reg_cc' else 'mutual information'}"
                  " with the template)")
        for name in ("reg_cc", "reg_mi") if name in fitted)


_FIXED = _FIXED + _baseline_checks()
_BY_FLAG = {c.flag: c for c in _FIXED}
_SHAPE = re.compile(r"^shapeqc_flag_(\w+)$")
SHAPEQC_DEFAULT = 0.5


def check_spec(flag: str) -> CheckSpec:
    """The spec of check ``flag``.

    Raises
    ------
    ValueError
        If no check has that flag column.
    """
    if flag in _BY_FLAG:
        return _BY_FLAG[flag]
    match = _SHAPE.match(flag)
    if match:
        s = match.group(1)
        return CheckSpec(
            flag,
            f"shapeqc_pfail_{s}",
            f"shapeqc_pfail_{s}",
            "above",
            SHAPEQC_DEFAULT,
            f"shape of {s.replace('_', ' ')} (ShapeQC P(FAIL))",
        )
    known = ", ".join([*_BY_FLAG, "shapeqc_flag_<structure>"])
    raise ValueError(f"{flag!r} is not a check (a flag column); checks: {known}")


def is_check(flag: str) -> bool:
    """Whether ``flag`` names a model check."""
    return flag in _BY_FLAG or bool(_SHAPE.match(flag))


def model_checks(metrics: dict[str, Any]) -> list[CheckSpec]:
    """The checks a participant's metrics hold a flag or a value for, in a stable order."""
    found = [c for c in _FIXED if c.flag in metrics or c.value(metrics) is not None]
    shape = sorted(
        {
            f"shapeqc_flag_{k.removeprefix('shapeqc_pfail_')}"
            for k in metrics
            if k.startswith("shapeqc_pfail_")
        }
        | {k for k in metrics if _SHAPE.match(k)}
    )
    return found + [check_spec(f) for f in shape]


def run_thresholds(result: dict[str, Any]) -> dict[str, float]:
    """The thresholds in force when a participant JSON was computed.

    The run's ``thresholds`` option (in the fingerprint), overridden by what a model stage
    recorded it used (``threshold`` in the ``segqc`` stage's provenance, or a
    ``thresholds`` dict).
    """
    prov = result.get("provenance") or {}
    found = ((prov.get("fingerprint") or {}).get("options") or {}).get("thresholds") or {}
    out = {k: float(v) for k, v in found.items() if _num(v) is not None}
    for name, stage in (prov.get("stages") or {}).items():
        stage = stage or {}
        spec = _BY_FLAG.get(f"{name}_flag")
        if spec is not None and _num(stage.get("threshold")) is not None:
            out[spec.threshold_key] = float(stage["threshold"])
        recorded = stage.get("thresholds")
        if isinstance(recorded, dict):
            out.update({k: float(v) for k, v in recorded.items() if _num(v) is not None})
    return out


@dataclass(frozen=True)
class Outcome:
    """One check of one image: value, threshold, verdict and risk ratio."""

    spec: CheckSpec
    value: float | None
    threshold: float
    flag: int | None
    ratio: float | None


def evaluate(result: dict[str, Any]) -> list[Outcome]:
    """Every model check of a participant JSON."""
    metrics = result.get("metrics") or {}
    thresholds = run_thresholds(result)
    out = []
    for spec in model_checks(metrics):
        value = spec.value(metrics)
        threshold = thresholds.get(spec.threshold_key)
        if threshold is None and spec.flag.startswith("shapeqc_"):
            threshold = thresholds.get("shapeqc_pfail")
        threshold = spec.default if threshold is None else threshold
        flag = metrics.get(spec.flag)
        if flag is None and value is not None:
            flag = int(spec.fails(value, threshold))  # a model that wrote no flag
        out.append(
            Outcome(
                spec,
                value,
                threshold,
                None if flag is None else int(flag),
                spec.ratio(value, threshold),
            )
        )
    return out


def _num(value: Any) -> float | None:
    """A finite float, or None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None
