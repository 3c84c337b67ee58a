"""Every output column of bids_qc: the public contract of ``group_T1w.tsv`` and the JSONs.

``docs/outputs.md`` is generated from this module (``python -m bids_qc.schema``); a test
checks that the committed file is up to date. Later models append their columns here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from .structures import STRUCTURES

Kind = Literal["str", "float", "int", "flag"]
Level = Literal["participant", "group"]


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
    """

    name: str
    kind: Kind
    unit: str
    description: str
    producer: str
    level: Level = "participant"


def _identity_columns() -> list[Column]:
    return [
        Column("bids_name", "str", "", "The T1w image this row describes "
               "(`sub-X[_ses-Y][_acq-Z][_run-N]_T1w`).", "bids_qc"),
        Column("reg_source", "str", "", "Which derivative supplied the template-space image: "
               "`fmriprep`, `freesurfer`, `fastsurfer`, `bids_qc`, or n/a.", "bids_qc"),
        Column("seg_source", "str", "", "Which derivative supplied the segmentation: "
               "`freesurfer`, `fastsurfer`, `fmriprep`, `bids_qc`, or n/a.", "bids_qc"),
        Column("qc_error", "str", "", "Short reason the image (or a stage of it) failed; "
               "empty when everything processed.", "bids_qc"),
    ]


def _classic_columns() -> list[Column]:
    cols = [
        Column("reg_cc", "float", "", "Pearson correlation of the template-space T1w with the "
               "template, inside the template's brain mask (RegQCNET baseline).", "classic"),
        Column("reg_mi", "float", "nats", "Mutual information of the template-space T1w and the "
               "template (32-bin joint histogram, natural log), inside the template's brain "
               "mask (RegQCNET baseline).", "classic"),
        Column("regqc_rmse_mm", "float", "mm", "Residual misregistration to the template "
               "predicted by RegQC: mean displacement over the template's field of view "
               "(RegQCNET Eq. 1).", "regqc"),
        Column("regqc_flag", "flag", "", "1 when regqc_rmse_mm exceeds the RegQC threshold "
               "(`--regqc-threshold-mm`, default 10).", "regqc"),
    ]
    for s in STRUCTURES:
        what = s.name.replace("_", " ")
        cols.append(Column(f"vol_{s.name}", "float", "mm^3", f"Volume of {what} in the "
                           "segmentation (voxel count x voxel volume).", "classic"))
    return cols


def _segqc_columns() -> list[Column]:
    cols = [
        Column(f"segqc_dice_{s.name}", "float", "", f"Dice of {s.name.replace('_', ' ')} "
               "against the true segmentation, as predicted by SegQC from the image and the "
               "segmentation.", "segqc")
        for s in STRUCTURES
    ]
    cols += [
        Column("segqc_dice_mean", "float", "", "Mean of the 20 predicted Dice values "
               "(SegQC).", "segqc"),
        Column("segqc_flag", "flag", "", "1 when any predicted Dice is below the SegQC "
               "threshold (`--segqc-threshold`, default 0.7).", "segqc"),
    ]
    return cols


def _group_columns() -> list[Column]:
    return [
        Column(f"vol_{s.name}_outlier", "flag", "", f"1 when vol_{s.name} lies beyond 1.5 IQR "
               "of the group (beyond 2 SD with 10 or more images).", "group", level="group")
        for s in STRUCTURES
    ]


#: Every column, in the stable order of ``group_T1w.tsv``.
COLUMNS: tuple[Column, ...] = tuple(
    _identity_columns() + _classic_columns() + _segqc_columns() + _group_columns()
)

_BY_NAME = {c.name: c for c in COLUMNS}

#: Columns whose values a participant JSON holds under ``metrics``.
METRIC_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in COLUMNS if c.level == "participant" and c.producer not in ("bids_qc",)
)


def column(name: str) -> Column:
    """The column called ``name``; ValueError if the schema has none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a column of the bids_qc schema") from None


def column_names(level: Level | None = None) -> list[str]:
    """Column names in table order (all, or those of one level)."""
    return [c.name for c in COLUMNS if level is None or c.level == level]


def render_markdown() -> str:
    """``docs/outputs.md``: every output file and column."""
    lines = [
        "# Outputs of bids_qc",
        "",
        "<!-- Generated by `python -m bids_qc.schema > docs/outputs.md`; do not edit. -->",
        "",
        "## Files",
        "",
        "| file | what |",
        "|---|---|",
        "| `dataset_description.json` | BIDS derivative description (GeneratedBy, "
        "SourceDatasets) |",
        "| `.bidsignore` | keeps BIDS validators away from the non-BIDS files below |",
        "| `logs/` | the settings of each run, nipype crash files |",
        "| `sub-XX/[ses-YY/]anat/<bids_name>.json` | every metric of one T1w image, with "
        "provenance, errors and skipped models |",
        "| `sub-XX/[ses-YY/]anat/<entities>_desc-vinn_dseg.nii.gz` | VINN's segmentation "
        "(FreeSurfer codes, on the T1w's grid) of an image without one from a derivative "
        "(`--segment`) |",
        "| `sub-XX/figures/` | figures of the reports |",
        "| `<bids_name>.html` | participant report |",
        "| `group_T1w.tsv` | one row per image, columns below, `n/a` for missing values |",
        "| `group_T1w.html` | group report: plots per metric, the review queue |",
        "| `group_T1w_flagged.tsv` | one row per flagged image and check (`bids_name`, `check`, "
        "`value`, `threshold`) |",
        "| `ratings_T1w.tsv` | human ratings merged by `bids_qc-ratings` (`bids_name`, `check`, "
        "`rating`) |",
        "| `thresholds_T1w.json` | per-check thresholds from `bids_qc-calibrate`; use with "
        "`--thresholds` |",
        "",
        "## Columns of `group_T1w.tsv`",
        "",
        "Missing values are `n/a` in the TSV and `null` in the JSONs. Flags are 0/1.",
        "",
        "| column | type | unit | level | producer | description |",
        "|---|---|---|---|---|---|",
    ]
    for c in COLUMNS:
        lines.append(
            f"| `{c.name}` | {c.kind} | {c.unit} | {c.level} | {c.producer} | {c.description} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - exercised by the docs test through the function
    sys.stdout.write(render_markdown())
