"""The frozen evaluation protocol: fixed before any QC model trains, never tuned after.

It fixes, per test set, the evaluation-only anatomies (SynthSeg maps 17-20, ds002748 sub-09
and sub-10, FreeSurfer's ``bert``), the seed, the contrast and failure families and the
number of cases (at least :data:`MIN_CASES`), and which failure families training may use
(the rest are held out, so a model card can report results on failures it never saw).
:func:`case_specs` lists the cases of a test set (cheap, deterministic) and
:func:`iter_cases` builds them one by one (slow: synthesis, damage, registration).

Real, not synthetic, segmentation differences come from ``bert``: its FreeSurfer ``aseg``
against a weak segmenter run on its ``norm.mgz`` (cases 2-300 of ``segqc_real_bert``),
against its ``aparc.DKTatlas+aseg`` with the cortical parcels mapped to the cortex codes
(case 0; in FreeSurfer 7 the aseg is itself surface-refined, so this real case is a perfect
PASS, Dice 1 everywhere), and against its volumetric ``aseg.presurf`` (case 1; cortex and
white matter differ, Dice about 0.83 and 0.91).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from bids_qc.structures import SUBCORTICAL_NAMES
from bids_qc.synth.damage import DAMAGE_FAMILIES, damage
from bids_qc.synth.labelmaps import EVAL_MAPS, EVAL_SUBJECTS, load_bert, load_label_map
from bids_qc.synth.labelmaps import load_subject_t1 as _load_t1
from bids_qc.synth.metrics import affine_rmse, structure_dice
from bids_qc.synth.misregistration import sample_affine
from bids_qc.synth.shape_damage import SHAPE_FAMILIES, damage_shape
from bids_qc.synth.synthesize import synthesize

PROTOCOL_VERSION = "1.0"
MIN_CASES = 300
#: Template grid spacing of the RegQC test sets, mm.
REGQC_RESOLUTION = 2.0
#: Probability that a SegQC/ShapeQC case is undamaged (severity 0).
P_CLEAN = 0.2

#: Damage families held out of training (SegQC), and those training may use.
HELDOUT_DAMAGE_FAMILIES: tuple[str, ...] = ("kmeans", "leak")
TRAINING_DAMAGE_FAMILIES: tuple[str, ...] = tuple(
    f for f in DAMAGE_FAMILIES if f not in HELDOUT_DAMAGE_FAMILIES
)
#: Shape families held out of training (ShapeQC), and those training may use.
HELDOUT_SHAPE_FAMILIES: tuple[str, ...] = ("spike", "merged")
TRAINING_SHAPE_FAMILIES: tuple[str, ...] = tuple(
    f for f in SHAPE_FAMILIES if f not in HELDOUT_SHAPE_FAMILIES
)

Task = Literal["segqc", "regqc", "shapeqc"]
_MAPS = tuple(f"synthseg:{i}" for i in EVAL_MAPS)
_SUBJECTS = tuple(f"ds002748:sub-{s}" for s in EVAL_SUBJECTS)
_BERT = ("freesurfer:bert",)
#: The real segmentations compared with bert's aseg (first cases of ``segqc_real_bert``).
_BERT_REAL = ("freesurfer_dkt", "freesurfer_presurf")


@dataclass(frozen=True)
class TestSet:
    """One frozen test set.

    Attributes
    ----------
    name, task, description
        Identity.
    anatomies : tuple of str
        ``synthseg:<n>``, ``ds002748:sub-<xx>`` or ``freesurfer:bert`` (evaluation-only).
    contrast_families : tuple of str
        Synthesis contrasts (empty for real images).
    failure_families : tuple of str
        Damage or shape families (empty for RegQC).
    n_cases : int
        Number of cases (>= :data:`MIN_CASES`).
    seed : int
        Base seed; case ``i`` uses ``seed * 100_000 + i``.
    rmse_range : (float, float)
        RegQC: misregistration RMSE range, mm (uniform).
    """

    name: str
    task: Task
    anatomies: tuple[str, ...]
    contrast_families: tuple[str, ...]
    failure_families: tuple[str, ...]
    n_cases: int
    seed: int
    description: str
    rmse_range: tuple[float, float] = (0.0, 20.0)


TEST_SETS: dict[str, TestSet] = {
    t.name: t
    for t in (
        TestSet("segqc_synth", "segqc", _MAPS, ("t1", "t1_wide"), TRAINING_DAMAGE_FAMILIES, 320,
                101, "SegQC on held-out anatomies, training contrasts and damage families"),
        TestSet("segqc_unseen_damage", "segqc", _MAPS, ("t1",), HELDOUT_DAMAGE_FAMILIES, 320,
                102, "SegQC on damage families never used in training"),
        TestSet("segqc_t2_shift", "segqc", _MAPS, ("t2",), TRAINING_DAMAGE_FAMILIES, 320,
                103, "SegQC under domain shift: T2-like contrast, never used in training"),
        TestSet("segqc_real_bert", "segqc", _BERT, (), ("intensity_classifier", "kmeans"), 301,
                104, "Real differences: bert aseg vs aparc.DKTatlas+aseg mapped to the structure "
                "groups (case 0), vs aseg.presurf (case 1), vs a weak segmenter on norm.mgz"),
        TestSet("regqc_synth", "regqc", _MAPS, ("t1", "t1_wide"), (), 320, 201,
                "RegQC: synthetic images in template space, RMSE uniform on [0, 20] mm"),
        TestSet("regqc_t2_shift", "regqc", _MAPS, ("t2",), (), 300, 202,
                "RegQC under domain shift (T2-like contrast)"),
        TestSet("regqc_real", "regqc", _SUBJECTS, (), (), 300, 203,
                "RegQC on real T1w (ds002748 sub-09, sub-10) registered to the template"),
        TestSet("shapeqc_synth", "shapeqc", _MAPS, ("t1",), TRAINING_SHAPE_FAMILIES, 336, 301,
                "ShapeQC on held-out anatomies, training shape families"),
        TestSet("shapeqc_unseen", "shapeqc", _MAPS, ("t1",), HELDOUT_SHAPE_FAMILIES, 336, 302,
                "ShapeQC on shape families never used in training"),
    )
}  # fmt: skip


@dataclass(frozen=True)
class CaseSpec:
    """Everything that defines one evaluation case (cheap to list, JSON-ready)."""

    test_set: str
    index: int
    anatomy: str
    seed: int
    contrast_family: str | None = None
    failure_family: str | None = None
    severity: float = 0.0
    structure: str | None = None
    rmse_target: float | None = None


@dataclass
class EvalCase:
    """A built evaluation case.

    Attributes
    ----------
    spec : CaseSpec
    image : ndarray or None
        The image the QC model sees.
    affine : ndarray (4, 4)
        Voxel-to-world matrix of ``image`` and ``labels``.
    labels : ndarray or None
        The segmentation under QC (damaged), when the task has one.
    truth : dict
        Exact targets: ``dice`` per structure (SegQC), ``rmse`` (RegQC), ``fail`` (ShapeQC).
    """

    spec: CaseSpec
    image: np.ndarray | None
    affine: np.ndarray
    labels: np.ndarray | None
    truth: dict[str, Any] = field(default_factory=dict)


def validate_protocol() -> None:
    """Check the frozen invariants; raises ``RuntimeError`` if one is broken."""
    for t in TEST_SETS.values():
        if t.n_cases < MIN_CASES:
            raise RuntimeError(f"{t.name}: {t.n_cases} cases, fewer than {MIN_CASES}")
        for a in t.anatomies:
            kind, _, ident = a.partition(":")
            ok = (kind == "synthseg" and int(ident) in EVAL_MAPS) or (
                kind == "ds002748" and ident.removeprefix("sub-") in EVAL_SUBJECTS
            ) or a == _BERT[0]  # fmt: skip
            if not ok:
                raise RuntimeError(f"{t.name}: anatomy {a} is not evaluation-only")


def get_test_set(name: str) -> TestSet:
    """The test set called ``name`` (``ValueError`` if unknown)."""
    if name not in TEST_SETS:
        raise ValueError(f"unknown test set {name!r}; known: {', '.join(TEST_SETS)}")
    return TEST_SETS[name]


def _severity(rng: np.random.Generator) -> float:
    clean = rng.random() < P_CLEAN
    value = float(rng.uniform(0.05, 1.0))
    return 0.0 if clean else round(value, 4)


@lru_cache(maxsize=32)
def case_specs(name: str) -> tuple[CaseSpec, ...]:
    """The cases of a test set, in order: balanced over anatomies and families."""
    t = get_test_set(name)
    rng = np.random.default_rng(t.seed)
    specs = []
    for i in range(t.n_cases):
        anatomy = t.anatomies[i % len(t.anatomies)]
        contrast = t.contrast_families[(i // len(t.anatomies)) % len(t.contrast_families)] if (
            t.contrast_families) else None  # fmt: skip
        failure = t.failure_families[i % len(t.failure_families)] if t.failure_families else None
        severity = _severity(rng) if t.task != "regqc" else (_severity(rng), 0.0)[1]
        rmse = round(float(rng.uniform(*t.rmse_range)), 4) if t.task == "regqc" else None
        structure = SUBCORTICAL_NAMES[(i // 2) % len(SUBCORTICAL_NAMES)] if (
            t.task == "shapeqc") else None  # fmt: skip
        if name == "segqc_real_bert" and i < len(_BERT_REAL):
            failure, severity = _BERT_REAL[i], 0.0
        specs.append(CaseSpec(name, i, anatomy, t.seed * 100_000 + i, contrast, failure,
                              severity, structure, rmse))  # fmt: skip
    return tuple(specs)


@lru_cache(maxsize=4)
def _eval_map(index: int) -> tuple[np.ndarray, np.ndarray]:
    lm = load_label_map(index, "eval")
    return lm.labels, lm.affine


@lru_cache(maxsize=2)
def _registered_subject(subject: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An evaluation subject's T1w and its affine to the template (registered once)."""
    from bids_qc.synth.register import register_affine
    from bids_qc.synth.template import load_template

    img = _load_t1(subject, "eval")
    to_mni = register_affine(img, load_template())
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine), to_mni


@lru_cache(maxsize=1)
def _bert() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    aseg = load_bert("aseg")
    norm = np.asarray(load_bert("norm").dataobj, dtype=np.float32)
    labels = np.rint(np.asarray(aseg.dataobj)).astype(np.int32)
    return labels, np.asarray(aseg.affine), norm


def _bert_labels(volume: str) -> np.ndarray:
    return np.rint(np.asarray(load_bert(volume).dataobj)).astype(np.int32)


def map_parcels_to_cortex(labels: np.ndarray) -> np.ndarray:
    """Cortical parcels 1000-1999 / 2000-2999 to FreeSurfer's cortex codes 3 / 42."""
    out = labels.copy()
    out[(labels >= 1000) & (labels <= 1999)] = 3
    out[(labels >= 2000) & (labels <= 2999)] = 42
    return out


def build_case(spec: CaseSpec, device: str = "cpu") -> EvalCase:
    """Build one case from its spec (deterministic)."""
    t = get_test_set(spec.test_set)
    kind, _, ident = spec.anatomy.partition(":")
    if kind == "freesurfer":
        aseg, affine, norm = _bert()
        if spec.failure_family == "freesurfer_dkt":
            other = map_parcels_to_cortex(_bert_labels("aparc.DKTatlas+aseg"))
        elif spec.failure_family == "freesurfer_presurf":
            other = _bert_labels("aseg.presurf")
        else:
            other = damage(aseg, spec.failure_family, spec.seed, spec.severity, image=norm).labels
        return EvalCase(spec, norm, affine, other, {"dice": structure_dice(aseg, other)})
    if t.task == "regqc":
        from bids_qc.synth.template import label_map_to_template, template_grid, to_template

        rng = np.random.default_rng(spec.seed)
        shape, t_affine = template_grid(REGQC_RESOLUTION)
        A = sample_affine(rng, spec.rmse_target, shape, t_affine)
        if kind == "ds002748":
            data, affine, to_mni = _registered_subject(ident)
        else:
            labels, affine = _eval_map(int(ident))
            case = synthesize(labels, affine, spec.seed, spec.contrast_family, split="eval",
                              affine_aug=False, device=device)  # fmt: skip
            data, affine = case.image, case.affine
            to_mni = label_map_to_template(int(ident))
        image, t_affine = to_template(data, affine, to_mni, resolution=REGQC_RESOLUTION,
                                      misregistration=A, device=device)  # fmt: skip
        return EvalCase(spec, image, t_affine, None, {"rmse": affine_rmse(A, shape, t_affine)})
    labels, affine = _eval_map(int(ident))
    case = synthesize(labels, affine, spec.seed, spec.contrast_family, split="eval",
                      resolution=1.0 if t.task == "shapeqc" else None, device=device)  # fmt: skip
    if t.task == "shapeqc":
        shape_case = damage_shape(case.labels, spec.structure, spec.failure_family, spec.seed,
                                  spec.severity)  # fmt: skip
        truth = {"fail": shape_case.fail, "dice": shape_case.dice,
                 "hausdorff": shape_case.hausdorff}  # fmt: skip
        return EvalCase(spec, case.image, case.affine, shape_case.labels, truth)
    dmg = damage(case.labels, spec.failure_family, spec.seed, spec.severity, image=case.image)
    return EvalCase(spec, case.image, case.affine, dmg.labels, {"dice": dmg.dice})


def iter_cases(
    name: str, *, start: int = 0, stop: int | None = None, device: str = "cpu"
) -> Iterator[EvalCase]:
    """Build the cases ``start:stop`` of a test set, in order (deterministic)."""
    for spec in case_specs(name)[start:stop]:
        yield build_case(spec, device)


validate_protocol()
