"""The model plugins of bids_qc, one :class:`~bids_qc.models.plugin.QCModel` per model.

:data:`PLUGINS` is the one registry: the model registry, the output columns, the checks,
the CLI threshold options and the workflow's model nodes are all derived from it, in its
order. It is an explicit tuple: nothing registers itself by import, and a test can pass
another tuple (``PLUGINS + (toy,)``) to the functions that take ``plugins``.

The plugins live here rather than in each ``models/<name>.py``, which import torch: the
CLI reads this module to print ``--help``.
"""

from __future__ import annotations

from ..structures import STRUCTURES, SUBCORTICAL
from .plugin import (
    CheckFamily,
    CheckSpec,
    Column,
    QCModel,
    Resources,
    ThresholdOption,
    gated_spec,
)

#: The sha256 of each model's shipped weights (its card and real-data figures are stamped
#: with it). A model is *installed* when its weights file ships.
_REGQC_SHA = "19d316caa2cf463f70ad4f03907ae0f9258806a7d216e8d823842d80b526e283"
_SEGQC_SHA = "29117c8889434a8388a26630f245947bf04427f968f209efe7b2b5613433eca3"
_MANIFOLDQC_SHA = "72ce5568a53ffbbee566e0af4a7f9d245c9ee2be2b576b9390feb04db895aa26"
_SHAPEQC_SHA = "a5b40097a3787f40985326ad492208b57596c439f26c5e3598d0a80c40e6e51d"
_VINN_SHA = "b3f6551ef81da7e9d38777ba9523110f10c6db5e04ec38122be2e0a377fea9d7"

#: The default Dice threshold of SegQC, and of ManifoldQC unless its option is given.
_DICE_DEFAULT = 0.7

REGQC = QCModel(
    spec=gated_spec("regqc", "1.2.0", "regqc.pt", _REGQC_SHA, ("template_t1w",),
                    "Residual misregistration to the template (mm), RegQCNET-style CNN"),
    title="RegQC",
    interface="bids_qc.interfaces.regqc:RegQC",
    # The 1 mm template-space T1w, its 4 mm input and a 1.3 M-parameter CNN.
    resources=Resources(mem_gb=1.0, threads=2),
    columns=(
        Column("regqc_rmse_mm", "float", "mm", "Residual misregistration to the template "
               "predicted by RegQC: mean displacement over the template's field of view "
               "(RegQCNET Eq. 1).", "regqc"),
        Column("regqc_flag", "flag", "", "1 when regqc_rmse_mm exceeds the RegQC threshold "
               "(`--regqc-threshold-mm`, default 10).", "regqc"),
    ),
    checks=(CheckSpec("regqc_flag", "regqc_rmse_mm", "regqc_rmse_mm", "above", 10.0,
                      "registration (RegQC predicted RMSE, mm)"),),
    options=(ThresholdOption("--regqc-threshold-mm", "regqc_rmse_mm", 10.0, "MM",
                             "RegQC flags a registration whose predicted RMSE exceeds this "
                             "(default 10 mm, RegQCNET's threshold)"),),
    report_section="registration",
    # Beside the classical registration metrics, before the volumes (earlier releases).
    columns_after="reg_mi_flag",
)

SEGQC = QCModel(
    spec=gated_spec("segqc", "1.1.0", "segqc.pt", _SEGQC_SHA, ("seg", "t1w"),
                    "Dice of each structure of a FreeSurfer-coded segmentation (3D ResNet, "
                    "SegQC)"),
    title="SegQC",
    interface="bids_qc.interfaces.segqc:SegQC",
    # A 256^3 image and segmentation plus the 2 mm model input stay under 1 GB.
    resources=Resources(mem_gb=1.0, threads=2),
    columns=(
        *(Column(f"segqc_dice_{s.name}", "float", "", f"Dice of {s.name.replace('_', ' ')} "
                 "against the true segmentation, as predicted by SegQC from the image and "
                 "the segmentation.", "segqc") for s in STRUCTURES),
        Column("segqc_dice_mean", "float", "", "Mean of the 20 predicted Dice values "
               "(SegQC).", "segqc"),
        Column("segqc_flag", "flag", "", "1 when any predicted Dice is below the SegQC "
               "threshold (`--segqc-threshold`, default 0.7).", "segqc"),
    ),
    checks=(CheckSpec("segqc_flag", "segqc_dice_*", "segqc_dice", "below", _DICE_DEFAULT,
                      "segmentation (SegQC lowest predicted Dice)"),),
    options=(ThresholdOption("--segqc-threshold", "segqc_dice", _DICE_DEFAULT, "DICE",
                             "SegQC flags a segmentation when any structure's predicted Dice "
                             "is below this (default 0.7)"),),
    report_section="segmentation",
)

MANIFOLDQC = QCModel(
    spec=gated_spec("manifoldqc", "1.2.0", "manifoldqc.pt", _MANIFOLDQC_SHA, ("seg", "t1w"),
                    "Dice of the 14 subcortical structures against a surrogate found on a "
                    "VAE's manifold of good image-segmentation pairs (ManifoldQC)"),
    title="ManifoldQC",
    interface="bids_qc.interfaces.manifoldqc:ManifoldQC",
    # SegQC's inputs plus a 200 k-parameter VAE and a 50-step latent search on one crop.
    resources=Resources(mem_gb=1.0, threads=2),
    columns=(
        *(Column(f"manifoldqc_dice_{s.name}", "float", "", f"Dice of "
                 f"{s.name.replace('_', ' ')} against the surrogate segmentation that "
                 "ManifoldQC finds on its learned manifold of good image-segmentation pairs "
                 "(an estimate of its true Dice).", "manifoldqc") for s in SUBCORTICAL),
        Column("manifoldqc_dice_mean", "float", "", "Mean of the 14 subcortical Dice values "
               "(ManifoldQC).", "manifoldqc"),
        Column("manifoldqc_flag", "flag", "", "1 when any ManifoldQC Dice is below its "
               "threshold (`--manifoldqc-threshold`, default: the SegQC threshold).",
               "manifoldqc"),
    ),
    checks=(CheckSpec("manifoldqc_flag", "manifoldqc_dice_*", "manifoldqc_dice", "below",
                      _DICE_DEFAULT, "segmentation (ManifoldQC lowest predicted Dice)"),),
    options=(ThresholdOption("--manifoldqc-threshold", "manifoldqc_dice", None, "DICE",
                             "ManifoldQC flags a segmentation when any subcortical "
                             "structure's Dice is below this (default: --segqc-threshold)",
                             fallback_key="segqc_dice"),),
    report_section="segmentation",
)


def _shapeqc_columns() -> tuple[Column, ...]:
    cols = []
    for s in SUBCORTICAL:
        what = s.name.replace("_", " ")
        cols.append(Column(f"shapeqc_pfail_{s.name}", "float", "", f"Probability that the shape "
                           f"of {what} is a segmentation failure (ShapeQC, from its spherical "
                           "thickness and area maps).", "shapeqc"))
        cols.append(Column(f"shapeqc_flag_{s.name}", "flag", "", f"1 when shapeqc_pfail_{s.name}"
                           " exceeds its threshold (shipped: F-recall 0.8 on the real calibration "
                           "shapes, raised to the highest P(FAIL) of good calibration people; "
                           "`--shapeqc-recall` re-derives it).", "shapeqc"))
    cols.append(Column("shapeqc_nflagged", "int", "", "Number of structures ShapeQC flags.",
                       "shapeqc"))
    return tuple(cols)


SHAPEQC = QCModel(
    spec=gated_spec("shapeqc", "1.2.0", "shapeqc.pt", _SHAPEQC_SHA, ("seg",),
                    "P(FAIL) of each subcortical structure's shape: spherical thickness/area "
                    "maps, 2D ResNet, Grad-CAM (ShapeQC)",
                    extra_files=(("shapeqc_thresholds.json",
                                  "2c2ff6a54be9f36d3833d7fcef941c75b7cdfaa9d708a3f97147bf1ba6a24eb0"),
                                 ("shapeqc_calibration.json",
                                  "c4c578d0418d090641187799bbab66067cdc8190ab374670743c614eb6bc34eb"))),
    title="ShapeQC",
    interface="bids_qc.interfaces.shapeqc:ShapeQC",
    # A 256^3 segmentation, 14 small meshes and a 0.2 M-parameter 2D CNN.
    resources=Resources(mem_gb=1.0, threads=1),
    columns=_shapeqc_columns(),
    # Per structure; its thresholds come from the shipped file or --shapeqc-recall (cli).
    check_family=CheckFamily("shapeqc_flag_", "shapeqc_pfail_", "above", 0.5,
                             "shape of {what} (ShapeQC P(FAIL))", fallback_key="shapeqc_pfail"),
    report_section="shape",
)

VINN = QCModel(
    # VINN's gate (Dice against real references, plausible volumes) is measured by its own
    # issue; until then it is below the gate.
    spec=gated_spec("vinn", "1.2.0", "vinn.pt", _VINN_SHA, ("t1w",),
                    "Segmentation of the T1w when no derivative has one (2.5D VINN, "
                    "FreeSurfer codes)"),
    title="VINN",
    interface="bids_qc.interfaces.vinn:VINNSegment",
    # 29 float16 class maps of a 0.7 mm head (about 1 GB) plus the image and slice stacks.
    resources=Resources(mem_gb=2.5, threads=2),
    role="segmenter",
)

#: Every model bids_qc knows, in the order of its columns, checks, options and nodes.
PLUGINS: tuple[QCModel, ...] = (REGQC, SEGQC, MANIFOLDQC, SHAPEQC, VINN)


def get_plugin(name: str, plugins: tuple[QCModel, ...] = PLUGINS) -> QCModel:
    """The plugin called ``name``.

    Raises
    ------
    ValueError
        If no plugin has that name.
    """
    for plugin in plugins:
        if plugin.name == name:
            return plugin
    known = ", ".join(p.name for p in plugins) or "none"
    raise ValueError(f"Unknown model {name!r}; models in this installation: {known}")
