"""What a QC model plugin is made of: one typed object per model, read by everything else.

A :class:`QCModel` owns a model's spec (version, weights, needs), its output columns, its
checks and their default thresholds, its CLI threshold options, the resources its node
declares, its nipype interface (by import path, so that ``bids_qc --help`` imports no
torch) and the participant-report section that shows it. The registry
(:data:`bids_qc.models.plugins.PLUGINS`), the output schema, the checks, the CLI and the
workflow are derived from the plugins; see ``docs/architecture.md``.

The value types a plugin is built from (:class:`ModelSpec`, :class:`Column`,
:class:`CheckSpec`) live here, so that this module imports nothing else of bids_qc and
the schema, checks and registry can all import it without an import cycle; they keep their
old homes as re-exports (``bids_qc.schema.Column``, ``bids_qc.reports.checks.CheckSpec``,
``bids_qc.models.registry.ModelSpec``).
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

#: Inputs a model may need, as QCInput roles: ``template_t1w`` (a T1w in template space, or
#: anything that gets there), ``seg`` (a FreeSurfer-coded segmentation), ``t1w`` (any native
#: T1w image).
Need = Literal["template_t1w", "seg", "t1w"]
Kind = Literal["str", "float", "int", "flag"]
Level = Literal["participant", "group"]
Direction = Literal["above", "below"]
#: What a model does in the workflow: a QC stage, or a producer of another stage's input.
Role = Literal["qc", "segmenter"]
#: The participant-report section that shows a model's verdicts and figures ("": only the
#: summary table, which shows every check).
Section = Literal["registration", "segmentation", "shape", ""]

#: A ratio is capped here so that a Dice of 0 or a threshold of 0 still sorts (and prints).
MAX_RATIO = 100.0


@dataclass(frozen=True)
class ModelSpec:
    """One QC model.

    Parameters
    ----------
    name : str
        CLI and column prefix (``regqc``).
    version : str
        Model version, recorded in the provenance.
    weights : str
        File name under ``bids_qc/models/weights/`` ("" for models without weights).
    sha256 : str
        Expected sha256 of the weights file.
    needs : tuple of str
        Inputs the model needs; a row lacking one skips the model with that reason.
    description : str
        One line for ``--help`` and the reports.
    experimental : bool
        Runs only when named in ``--models``: its real-data figures do not pass the gate
        (:mod:`bids_qc.models.gate`), so its flags could mislead. Plugins set it from the
        generated figures (:func:`gated_spec`), never by hand.
    extra_files : tuple of (str, str)
        Further files under ``weights/`` that ship with the model (thresholds, calibration
        data), each with its expected sha256; read with
        :func:`bids_qc.models.registry.load_extra_json`.
    """

    name: str
    version: str
    weights: str
    sha256: str
    needs: tuple[Need, ...]
    description: str = ""
    experimental: bool = False
    extra_files: tuple[tuple[str, str], ...] = ()

    def weights_path(self) -> Path:
        """The installed weights file."""
        return Path(str(resources.files("bids_qc.models") / "weights" / self.weights))

    def is_installed(self) -> bool:
        """Whether the weights file ships with this installation."""
        return bool(self.weights) and self.weights_path().is_file()


def gated_spec(name: str, version: str, weights: str, sha256: str, needs: tuple[Need, ...],
               description: str = "", extra_files: tuple[tuple[str, str], ...] = ()
               ) -> ModelSpec:
    """A :class:`ModelSpec` whose ``experimental`` follows the real-data gate.

    A plugin gets its spec from here, so the flag is never typed: a retrain whose real test
    figures pass turns its model on, one that fails (or is not yet measured) turns it off.
    """
    from .gate import passes

    return ModelSpec(name, version, weights, sha256, needs, description,
                     experimental=not passes(name, sha256), extra_files=extra_files)


@dataclass(frozen=True)
class Column:
    """One output column.

    Parameters
    ----------
    name : str
        Column name (public contract: never renamed without a major version).
    kind : {"str", "float", "int", "flag"}
        Value type; flags are 0/1; missing values are ``n/a`` in the TSV, null in JSON.
    unit : str
        Unit ("" when dimensionless).
    description : str
        What the value means.
    producer : str
        The stage that computes it (``classic``, ``group``, a model name, ``bids_qc``).
    level : {"participant", "group"}
        ``group`` columns exist only in the group table (computed across images).
    descriptive : bool
        A descriptive statistic in scanner units or voxel counts (the IQMs'
        ``summary_*``), not a quality measure: it gets no dataset-relative robust z-score
        (``rz_*``), whose outliers would say nothing about quality, and no plot in the
        group report.
    """

    name: str
    kind: Kind
    unit: str
    description: str
    producer: str
    level: Level = "participant"
    descriptive: bool = False


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
    fallback_key : str
        Threshold key used when the run recorded none under ``threshold_key`` (one
        threshold for a whole family of per-structure checks); "" for none.
    """

    flag: str
    metric: str
    threshold_key: str
    direction: Direction
    default: float
    label: str
    fallback_key: str = ""

    @property
    def model(self) -> str:
        """The model whose check this is (the flag column's prefix)."""
        return self.flag.split("_", 1)[0]

    @property
    def experimental(self) -> bool:
        """Whether the model is experimental (below the real-data gate): reports say so."""
        from .registry import REGISTRY

        return any(s.name == self.model and s.experimental for s in REGISTRY)

    def value(self, metrics: dict[str, Any]) -> float | None:
        """The check's value in a participant's metrics (None when absent)."""
        if self.metric.endswith("*"):
            prefix = self.metric[:-1]
            values = [finite(v) for k, v in metrics.items()
                      if k.startswith(prefix) and k != prefix + "mean"]
            values = [v for v in values if v is not None]
            if values:
                return min(values)
            return finite(metrics.get(prefix + "mean"))
        return finite(metrics.get(self.metric))

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


@dataclass(frozen=True)
class CheckFamily:
    """One check per structure, named ``<flag_prefix><structure>`` (ShapeQC's).

    Parameters
    ----------
    flag_prefix, metric_prefix : str
        ``shapeqc_flag_`` and ``shapeqc_pfail_``: check ``shapeqc_flag_<s>`` judges the
        value ``shapeqc_pfail_<s>``, against threshold key ``shapeqc_pfail_<s>``.
    direction : {"above", "below"}
        As in :class:`CheckSpec`.
    default : float
        Threshold when the run recorded none, neither per structure nor ``fallback_key``.
    label : str
        Label with ``{what}`` for the structure's name in words.
    fallback_key : str
        One threshold for every structure of the family (``shapeqc_pfail``).
    """

    flag_prefix: str
    metric_prefix: str
    direction: Direction
    default: float
    label: str
    fallback_key: str = ""

    def structure(self, flag: str) -> str | None:
        """The structure of a family flag (None when ``flag`` is not one)."""
        s = flag.removeprefix(self.flag_prefix)
        return s if flag.startswith(self.flag_prefix) and re.fullmatch(r"\w+", s) else None

    def spec(self, structure: str) -> CheckSpec:
        """The check of one structure."""
        metric = self.metric_prefix + structure
        return CheckSpec(self.flag_prefix + structure, metric, metric, self.direction,
                         self.default, self.label.format(what=structure.replace("_", " ")),
                         self.fallback_key)


@dataclass(frozen=True)
class ThresholdOption:
    """A CLI option that sets one threshold key (``--segqc-threshold DICE``).

    Parameters
    ----------
    flag : str
        The option (``--segqc-threshold``); argparse derives its ``dest`` from it.
    threshold_key : str
        The key of ``Settings.thresholds`` it sets (``segqc_dice``).
    default : float or None
        Its default; None: the value of ``fallback_key``'s option.
    metavar, help : str
        As in argparse.
    fallback_key : str
        Threshold key whose value a None default takes (``segqc_dice``).
    """

    flag: str
    threshold_key: str
    default: float | None
    metavar: str
    help: str
    fallback_key: str = ""

    @property
    def dest(self) -> str:
        """The argparse destination (``--regqc-threshold-mm`` -> ``regqc_threshold_mm``)."""
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Resources:
    """What a model's node declares to the scheduler.

    Parameters
    ----------
    mem_gb : float
        Peak memory of one image (GB).
    threads : int
        CPU threads it uses (capped by the processors the run has).
    batchable : bool
        Whether its interface could take several images in one call (none does yet: every
        node is one image, so a stage is retried or resumed per image).
    """

    mem_gb: float
    threads: int
    batchable: bool = False


@dataclass(frozen=True)
class QCModel:
    """One model plugin: everything bids_qc needs to know about a model, in one place.

    Parameters
    ----------
    spec : ModelSpec
        Name, version, weights, needs (from :func:`gated_spec`).
    title : str
        Display name (``SegQC``) for the docs.
    interface : str
        ``module:Class`` of its nipype interface, imported only when a workflow is built.
        It takes ``qc_input``, ``classic_result``, ``device`` and ``thresholds`` (and
        ``output_dir`` when it writes figures) and returns ``result``, a stage result
        (:func:`bids_qc.results.stage_result`).
    resources : Resources
        Memory and threads of its node.
    columns : tuple of Column
        Its output columns, in table order.
    checks : tuple of CheckSpec
        Its checks (flag column, value, threshold key, direction, default, label).
    check_family : CheckFamily or None
        Per-structure checks whose structures are only known from the metrics.
    options : tuple of ThresholdOption
        Its threshold options on the command line.
    role : {"qc", "segmenter"}
        A QC stage, or a producer of the segmentation that other models check (VINN).
    report_section : {"registration", "segmentation", "shape", ""}
        The participant-report section that shows its verdicts ("": the summary only).
    columns_after : str
        Column after which its columns go in the table ("": after every other model's),
        so that a plugin keeps the column order of earlier releases.
    """

    spec: ModelSpec
    title: str
    interface: str
    resources: Resources
    columns: tuple[Column, ...] = ()
    checks: tuple[CheckSpec, ...] = ()
    check_family: CheckFamily | None = None
    options: tuple[ThresholdOption, ...] = ()
    role: Role = "qc"
    report_section: Section = ""
    columns_after: str = ""

    @property
    def name(self) -> str:
        """The model's name (``regqc``): CLI name, column prefix, node name."""
        return self.spec.name

    @property
    def needs(self) -> tuple[Need, ...]:
        """Inputs the model needs."""
        return self.spec.needs

    def interface_class(self) -> type:
        """Import and return its nipype interface class (imports torch and nipype)."""
        module, _, name = self.interface.partition(":")
        return getattr(importlib.import_module(module), name)


def finite(value: Any) -> float | None:
    """A finite float, or None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None
