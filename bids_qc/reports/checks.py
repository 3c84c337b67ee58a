"""The QC checks: which flag column says what, from which value, against which threshold.

A *check* is named by its flag column (``regqc_flag``, ``segqc_flag``, ``manifoldqc_flag``,
``shapeqc_flag_<structure>``; at group level also ``vol_<structure>_outlier``). Reports,
the review queue, ratings and calibration all speak of checks by that name.

The flag a model wrote in the JSON is what counts; the threshold shown beside it is the one
in force when the image was processed (the run's ``thresholds`` option, recorded in the
fingerprint), else the model's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..models.plugin import MAX_RATIO, CheckFamily, CheckSpec, Direction, QCModel
from ..models.plugin import finite as _num
from ..models.plugins import PLUGINS, SHAPEQC

__all__ = ["MAX_RATIO", "SHAPEQC_DEFAULT", "CheckSpec", "Direction", "Outcome", "check_spec",
           "evaluate", "is_check", "model_check_names", "model_checks", "run_thresholds"]

#: ShapeQC's threshold where neither the run nor its shipped file has one.
SHAPEQC_DEFAULT = SHAPEQC.check_family.default if SHAPEQC.check_family else 0.5


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


@lru_cache(maxsize=8)
def _table(plugins: tuple[QCModel, ...]) -> tuple[dict[str, CheckSpec], tuple[CheckFamily, ...]]:
    """The fixed checks by flag (the plugins', then the baselines') and the check families."""
    fixed = [c for p in plugins for c in p.checks] + list(_baseline_checks())
    families = tuple(p.check_family for p in plugins if p.check_family is not None)
    return {c.flag: c for c in fixed}, families


def _family_spec(flag: str, families: tuple[CheckFamily, ...]) -> CheckSpec | None:
    for family in families:
        structure = family.structure(flag)
        if structure is not None:
            return family.spec(structure)
    return None


def check_spec(flag: str, plugins: tuple[QCModel, ...] = PLUGINS) -> CheckSpec:
    """The spec of check ``flag``.

    Raises
    ------
    ValueError
        If no check has that flag column.
    """
    fixed, families = _table(plugins)
    if flag in fixed:
        return fixed[flag]
    spec = _family_spec(flag, families)
    if spec is not None:
        return spec
    known = ", ".join([*fixed, *(f"{f.flag_prefix}<structure>" for f in families)])
    raise ValueError(f"{flag!r} is not a check (a flag column); checks: {known}")


def is_check(flag: str, plugins: tuple[QCModel, ...] = PLUGINS) -> bool:
    """Whether ``flag`` names a model check."""
    fixed, families = _table(plugins)
    return flag in fixed or _family_spec(flag, families) is not None


def model_check_names(plugins: tuple[QCModel, ...] = PLUGINS) -> list[str]:
    """The models' check names, for messages (``shapeqc_flag_<structure>`` for a family)."""
    return [*(c.flag for p in plugins for c in p.checks),
            *(f"{p.check_family.flag_prefix}<structure>" for p in plugins if p.check_family)]


def model_checks(metrics: dict[str, Any],
                 plugins: tuple[QCModel, ...] = PLUGINS) -> list[CheckSpec]:
    """The checks a participant's metrics hold a flag or a value for, in a stable order."""
    fixed, families = _table(plugins)
    found = [c for c in fixed.values() if c.flag in metrics or c.value(metrics) is not None]
    flags: set[str] = set()
    for family in families:
        flags |= {family.flag_prefix + k.removeprefix(family.metric_prefix)
                  for k in metrics if k.startswith(family.metric_prefix)}
        flags |= {k for k in metrics if family.structure(k) is not None}
    return found + [check_spec(f, plugins) for f in sorted(flags)]


def run_thresholds(result: dict[str, Any],
                   plugins: tuple[QCModel, ...] = PLUGINS) -> dict[str, float]:
    """The thresholds in force when a participant JSON was computed.

    The run's ``thresholds`` option (in the fingerprint), overridden by what a model stage
    recorded it used (``threshold`` in the ``segqc`` stage's provenance, or a
    ``thresholds`` dict).
    """
    prov = result.get("provenance") or {}
    found = ((prov.get("fingerprint") or {}).get("options") or {}).get("thresholds") or {}
    out = {k: float(v) for k, v in found.items() if _num(v) is not None}
    fixed = _table(plugins)[0]
    for name, stage in (prov.get("stages") or {}).items():
        stage = stage or {}
        spec = fixed.get(f"{name}_flag")
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


def evaluate(result: dict[str, Any], plugins: tuple[QCModel, ...] = PLUGINS) -> list[Outcome]:
    """Every model check of a participant JSON (of the models of ``plugins``)."""
    metrics = result.get("metrics") or {}
    thresholds = run_thresholds(result, plugins)
    out = []
    for spec in model_checks(metrics, plugins):
        value = spec.value(metrics)
        threshold = thresholds.get(spec.threshold_key)
        if threshold is None and spec.fallback_key:
            threshold = thresholds.get(spec.fallback_key)
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
