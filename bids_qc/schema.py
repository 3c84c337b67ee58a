"""Every output column of bids_qc: the public contract of ``group_T1w.tsv`` and the JSONs.

``docs/outputs.md`` is generated from this module (``python -m bids_qc.schema``); a test
checks that the committed file is up to date. A model's columns come from its plugin
(:class:`bids_qc.models.plugin.QCModel`); :func:`build_columns` places them.
"""

from __future__ import annotations

import sys

from .iqms.definitions import IQMS
from .models.plugin import Column, Kind, Level, QCModel
from .models.plugins import PLUGINS
from .structures import STRUCTURES

__all__ = ["COLUMNS", "JSON_KEYS", "METRIC_COLUMNS", "PROVENANCE_KEYS", "RZ_COLUMNS",
           "RZ_CUTOFF", "RZ_PREFIX", "Column", "Kind", "Level", "build_columns", "column",
           "column_names", "participant_columns", "render_markdown", "rz_columns"]


def _identity_columns() -> list[Column]:
    return [
        Column("bids_name", "str", "", "The T1w image this row describes "
               "(`sub-X[_ses-Y][_acq-Z][_run-N]_T1w`).", "bids_qc"),
        Column("reg_source", "str", "", "Which derivative supplied the template-space image: "
               "`fmriprep`, `freesurfer`, `fastsurfer`, or n/a; `bids_qc`: bids_qc's own "
               "affine registration of the T1w, through the brain mask of its segmentation "
               "(the registration checks then check bids_qc's own work).", "bids_qc"),
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
        Column("reg_cc_flag", "flag", "", "1 when reg_cc is below its threshold, fitted at 95% "
               "specificity on good real calibration images in template space (see the "
               "RegQC card's real-data table); empty without a template-space image.",
               "classic"),
        Column("reg_mi_flag", "flag", "", "1 when reg_mi is below its threshold (fitted like "
               "reg_cc's).", "classic"),
    ]
    for s in STRUCTURES:
        what = s.name.replace("_", " ")
        cols.append(Column(f"vol_{s.name}", "float", "mm^3", f"Volume of {what} in the "
                           "segmentation (voxel count x voxel volume).", "classic"))
    cols.append(Column("etiv_mm3", "float", "mm^3", "Estimated total intracranial volume "
                       "(eTIV) from the FreeSurfer (else FastSurfer) subject's "
                       "`stats/aseg.stats` (`# Measure EstimatedTotalIntraCranialVol`); n/a "
                       "without one. The group level divides volumes by it.", "classic"))
    return cols


def _iqm_columns() -> list[Column]:
    """The image quality metrics of the raw T1w (MRIQC's names and units), advisory."""
    return [Column(q.name, "float", q.unit, f"{q.description} {q.reads}"
                   + (" n/a on skull-stripped or defaced images." if q.background else "")
                   + " Advisory (no PASS/FAIL).", "iqms", descriptive=q.descriptive)
            for q in IQMS]


def participant_columns(plugins: tuple[QCModel, ...] = PLUGINS) -> list[Column]:
    """The participant-level columns: identity, classical, each plugin's, then the IQMs.

    A plugin's columns follow its ``columns_after`` column where it names one (RegQC's sit
    beside the classical registration metrics), else the columns before them. The IQMs
    come last, so that they move no earlier column.
    """
    cols = _identity_columns() + _classic_columns()
    for plugin in plugins:
        names = [c.name for c in cols]
        at = names.index(plugin.columns_after) + 1 if plugin.columns_after else len(cols)
        cols[at:at] = plugin.columns
    return cols + _iqm_columns()


def _group_columns() -> list[Column]:
    return [
        Column(f"vol_{s.name}_outlier", "flag", "", f"1 when vol_{s.name} lies beyond 1.5 IQR "
               "of the group (beyond 2 SD with 10 or more images).", "group", level="group")
        for s in STRUCTURES
    ]


#: Prefix of the robust z-score columns. A prefix, not a suffix: code that recognises a
#: model's columns by their start (``shapeqc_pfail_``, ``segqc_dice_``) must not take a
#: score for a model output.
RZ_PREFIX = "rz_"
#: ``|z|`` beyond which a robust z-score is an outlier (:data:`bids_qc.robust_z.OUTLIER_Z`).
RZ_CUTOFF = 3.5


def _robust_z_columns(metrics: list[Column]) -> list[Column]:
    # One dataset-relative score per numeric metric (bids_qc.robust_z has the rules).
    cols = []
    for c in metrics:
        if c.kind not in ("float", "int") or c.descriptive:
            continue
        scaled = (" of the volume divided by the intracranial volume (etiv_mm3 where the "
                  "image has it, else vol_whole_brain times the dataset's median "
                  "etiv_mm3 / vol_whole_brain)"
                  if c.name.startswith("vol_") and c.name != "vol_whole_brain" else "")
        cols.append(Column(
            f"{RZ_PREFIX}{c.name}", "float", "",
            f"Robust z-score{scaled} of {c.name}: 0.6745 (x - median) / MAD over the images "
            "of its acquisition group (acq, run, Manufacturer, MagneticFieldStrength) when "
            "the group has 10 or more, else over the dataset; n/a when the dataset has "
            f"fewer than 10 images or the MAD is 0. Beyond |z| > {RZ_CUTOFF}: listed in "
            "rz_outliers (advisory).", "group", level="group"))
    cols += [
        Column("rz_noutliers", "int", "", f"Number of `rz_*` scores of this image beyond "
               f"the dataset-relative cut-off |z| > {RZ_CUTOFF}. Advisory: it changes no "
               "model's flag and no `*_flag` column.", "group", level="group"),
        Column("rz_outliers", "str", "", f"The metrics whose `rz_*` score lies beyond "
               f"|z| > {RZ_CUTOFF}, separated by spaces (empty: none).", "group",
               level="group"),
    ]
    return cols


def build_columns(plugins: tuple[QCModel, ...] = PLUGINS) -> tuple[Column, ...]:
    """Every column of a run with these plugins, in the stable order of ``group_T1w.tsv``."""
    participant = participant_columns(plugins)
    return tuple(participant + _group_columns() + _robust_z_columns(participant))


#: Every column, in the stable order of ``group_T1w.tsv``.
COLUMNS: tuple[Column, ...] = build_columns()

def rz_columns(columns: tuple[Column, ...]) -> dict[str, str]:
    """Metric -> its robust z-score column, in table order."""
    return {c.name[len(RZ_PREFIX):]: c.name for c in columns
            if c.name.startswith(RZ_PREFIX) and c.name not in ("rz_noutliers", "rz_outliers")}


#: Metric -> its robust z-score column, in table order.
RZ_COLUMNS: dict[str, str] = rz_columns(COLUMNS)

_BY_NAME = {c.name: c for c in COLUMNS}

#: Columns whose values a participant JSON holds under ``metrics``.
METRIC_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in COLUMNS if c.level == "participant" and c.producer not in ("bids_qc",)
)


#: Top-level keys of a participant JSON and what each holds, in file order
#: (:func:`bids_qc.results.assemble` writes them; a test checks that the two agree).
JSON_KEYS: tuple[tuple[str, str], ...] = (
    ("bids_name", "the T1w image (`sub-X[_ses-Y][_acq-Z][_run-N]_T1w`)"),
    ("entities", "its BIDS entities (`subject`, `session`, `acquisition`, `run`, ...)"),
    ("acquisition", "the raw image's sidecar fields `Manufacturer` and "
     "`MagneticFieldStrength` where its sidecars (BIDS inheritance) hold them; the group "
     "level's `rz_*` scores are per acquisition group"),
    ("reg_source", "the derivative that supplied the template-space image, `bids_qc` for "
     "bids_qc's own registration, or null"),
    ("seg_source", "the derivative that supplied the segmentation, or null"),
    ("qc_error", "short reason a stage failed; empty when every stage ran"),
    ("metrics", "every participant-level column below that a stage computed (null: not "
     "computable for this image)"),
    ("errors", "one object per failed stage: `stage`, `file`, `problem`, `hint` (what to do), "
     "`message` (and `traceback` for unexpected errors)"),
    ("warnings", "problems that did not stop a stage (e.g. an odd orientation)"),
    ("skipped", "checks that did not run, each with `stage` or `model` and `reason`"),
    ("provenance", "how the result was made: see the next table"),
)

#: Keys of a participant JSON's ``provenance``.
PROVENANCE_KEYS: tuple[tuple[str, str], ...] = (
    ("format", "version of this JSON layout"),
    ("bids_qc_version", "the bids_qc version that wrote it"),
    ("timestamp", "when (UTC, ISO 8601)"),
    ("device", "the torch device the models ran on (`cpu`, `cuda`, ...)"),
    ("fingerprint", "what the result depends on: bids_qc version, md5 of every input file, "
     "model versions and weights sha256, output-relevant options (thresholds, ...); a rerun "
     "skips the image while it is unchanged"),
    ("inputs", "each input's role, path and the derivative it came from"),
    ("seg_candidates", "every segmentation found for the image, in `--seg-source auto` order"),
    ("stages", "per stage: the template (name, sha256), the model (name, version, weights "
     "sha256), the threshold used, the files read"),
    ("stage_seconds", "each node's wall seconds in the run that wrote the JSON, as the "
     "scheduler saw them (MultiProc and Linear)"),
)

#: Provenance keys that legitimately differ between two runs on the same inputs (when and
#: how fast); everything else in the outputs is byte-for-byte reproducible.
RUN_VARIABLE_KEYS: tuple[str, ...] = ("timestamp", "stage_seconds")


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
        "| `dataset_description.json` | BIDS derivative description (GeneratedBy with "
        "bids_qc's version, SourceDatasets, Authors: edit them in, reruns keep them) |",
        "| `README.md` | what the dataset is, bids_qc's version, the layout below |",
        "| `.bidsignore` | the files that are not BIDS files (reports, figures, logs, the "
        "per-image result JSONs, group tables), so BIDS validators skip them |",
        "| `.bids-validator-config.json` | configuration of the legacy (1.x) `bids-validator`, "
        "which applies raw-data rules only: it skips the naming check of the segmentations "
        "and transforms and reports what a derivative cannot meet (no raw data in the "
        "subject folders) as warnings |",
        "| `logs/` | the settings of each run (`run-<time>-<host>-<pid>.json`, with each "
        "phase's and each node's wall seconds), nipype crash files, `md5_cache.json` (input "
        "md5s reused while size and mtime are unchanged) |",
        "| `sub-XX/[ses-YY/]anat/<bids_name>.json` | every metric of one T1w image, with "
        "provenance, errors and skipped models |",
        "| `sub-XX/[ses-YY/]anat/<entities>_desc-vinn_dseg.nii.gz` | VINN's segmentation "
        "(FreeSurfer codes, on the T1w's grid) of an image without one from a derivative "
        "(`--segment`) |",
        "| `sub-XX/[ses-YY/]anat/<entities>_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.txt`"
        " | bids_qc's own affine registration (ITK text affine, as fMRIPrep's) of a T1w with "
        "a segmentation but no template-space image or transform from a derivative; "
        "`reg_source` = `bids_qc` |",
        "| `sub-XX/figures/` | figures of the reports |",
        "| `sub-XX/[ses-YY/]anat/<entities>_desc-manifoldqc_dseg.nii.gz` | ManifoldQC's "
        "surrogate segmentation (FreeSurfer codes of the 14 subcortical structures, on the "
        "input segmentation's grid) |",
        "| `<bids_name>.html` | participant report |",
        "| `group_T1w.tsv` | one row per image, columns below, `n/a` for missing values |",
        "| `group_T1w.html` | group report: plots per metric, the review queue |",
        "| `group_T1w_flagged.tsv` | one row per flagged image and check (`bids_name`, `check`, "
        "`value`, `threshold`) |",
        "| `group_T1w_queue.tsv` | the whole review queue, riskiest first (`rank`, `bids_name`, "
        "`risk`, `flags`, `qc_error`, `rz_max`: see [The review queue](#the-review-queue)); "
        "the HTML shows its top rows only in large groups |",
        "| `ratings_T1w.tsv` | human ratings merged by `bids_qc-ratings` (`bids_name`, `check`, "
        "`rating`) |",
        "| `thresholds_T1w.json` | per-check thresholds from `bids_qc-calibrate`; use with "
        "`--thresholds` |",
        "",
        "OUTPUT_DIR is a BIDS-Derivatives dataset that `bids-validator` accepts without "
        "errors. The README, `.bidsignore` and `.bids-validator-config.json` carry the line "
        "\"Written by bids_qc; rewritten on every run\": a rerun rewrites them, and leaves "
        "alone a file without it (yours, or one you deleted the line from). The per-image "
        "result JSONs are bidsignored as MRIQC's are: BIDS has no file type for QC metrics "
        "yet, and a JSON in `anat/` without an image reads as a sidecar without its data "
        "file.",
        "",
        "## The review queue",
        "",
        "`group_T1w_queue.tsv` and the group report list the images riskiest first, from "
        "two kinds of evidence:",
        "",
        "- **Absolute**: every check's value against its threshold, as a ratio (value / "
        "threshold where high values fail, threshold / value where low values fail, such as "
        "a predicted Dice); the group's volume outlier bounds count as checks. A ratio above "
        "1 means the check flagged the image.",
        "- **Relative**: `rz_max`, the image's largest |z| over its `rz_*` scores (below), "
        f"as `min(rz_max / {RZ_CUTOFF}, 1)`.",
        "",
        "An image's `risk` is the larger of its largest ratio and its relative evidence. "
        "Images whose processing failed come first (`risk` inf), then by decreasing risk, "
        "ties by decreasing `rz_max`, then by name; images without any value come last. "
        f"Because the relative evidence stops at 1, an image that no check flagged but that "
        f"is a robust outlier (|z| > {RZ_CUTOFF}) ranks above every unflagged image and "
        "below every flagged one: the checks are validated against ratings, while a "
        "dataset-relative outlier may be true anatomy (a patient) or an acquisition of its "
        "own. Below the cut-off, |z| / 3.5 still lifts images far out in their dataset "
        "above those only near a threshold. The scores change no check, no flag and no "
        "`group_T1w_flagged.tsv` row.",
        "",
        "## Participant JSON",
        "",
        "`sub-XX/[ses-YY/]anat/<bids_name>.json` holds, for one T1w image:",
        "",
        "| key | what |",
        "|---|---|",
        *[f"| `{k}` | {v} |" for k, v in JSON_KEYS],
        "",
        "| `provenance` key | what |",
        "|---|---|",
        *[f"| `{k}` | {v} |" for k, v in PROVENANCE_KEYS],
        "",
        "## Columns of `group_T1w.tsv`",
        "",
        "Missing values are `n/a` in the TSV and `null` in the JSONs. Flags are 0/1.",
        "",
        "The `rz_*` columns are dataset-relative robust z-scores, 0.6745 (x - median) / MAD, "
        "of every numeric metric (volumes other than `vol_whole_brain` first divided by the "
        "intracranial volume: FreeSurfer's eTIV, `etiv_mm3`, where the image has it, else "
        "the segmentation's intracranial content `vol_whole_brain` brought to eTIV's scale "
        "by the dataset's median `etiv_mm3 / vol_whole_brain` over the images with both, "
        "so that the two kinds of images are comparable). They are computed per "
        "acquisition group "
        "(the `acq` and `run` entities, and the sidecar's `Manufacturer` and "
        "`MagneticFieldStrength` where the participant JSON holds them) when the group has "
        "10 or more images, else against the whole dataset; a dataset of fewer than 10 "
        "images, or a metric whose MAD is 0, gets none and a warning. An image is a robust "
        f"outlier for a metric when |z| > {RZ_CUTOFF}: `rz_outliers` names those metrics. "
        "They are advisory: they change no model's PASS/FAIL and no `*_flag` column; the "
        "review queue's risk takes them into account below every flagged image (see "
        "`group_T1w_queue.tsv` above and the group report). The participant reports show "
        "each image's scores as strips once the group level has run.",
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
