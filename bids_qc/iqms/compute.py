"""All IQMs of one raw T1w: masks, bias field, tissues, then each measure.

Which image each IQM reads (MRIQC computes all but the FWHM and the artefact indices on
its INU-corrected image):

- tissue measures (``snr_*``, ``cjv``, ``cnr``, ``summary_{csf,gm,wm}_*``, the
  mixture behind ``icvs_*``/``rpve_*``): the image divided by N4's field (fitted in the
  brain, geometric mean 1 there, so intensities keep the raw scale);
- measures of the whole field of view or the air (``snrd_*``'s air SD, ``efc``, ``fber``,
  ``wm2max``, ``qi_*``, ``summary_bg_*``): the raw image, because N4's field is fitted
  inside the brain only (a deviation from MRIQC for ``efc``, ``fber`` and ``wm2max``,
  whose WM median is then the raw image's too);
- ``fwhm_*``: the raw image inside the brain mask.

Negative intensities are set to 0 first, as MRIQC does.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..io import load_image, load_labels
from ..transforms import resample_to_grid
from . import artifacts, measures
from .bias import N4Settings, bounding_box, n4_field
from .definitions import BACKGROUND_IQMS, IQM_NAMES, SUMMARY_STATS, TISSUES
from .masks import Coarse, background_problem, head_masks
from .smoothness import fwhm
from .tissues import seed_classes, tissue_posteriors

#: The smallest brain (ml) the IQMs are computed on: an adult brain is above 1000 ml, so a
#: smaller one is a failed segmentation or another image's.
MIN_BRAIN_ML = 100.0


@dataclass(frozen=True)
class TemplateImage:
    """The T1w in template space, with what ``tpm_overlap_*`` needs.

    Parameters
    ----------
    image : ndarray
        The template-space T1w.
    mask : ndarray of bool
        The template's brain mask on that grid.
    tpms : dict
        Tissue -> its probability map on that grid (None where none is installed).
    source : str
        Where the TPMs come from (recorded in the provenance).
    """

    image: np.ndarray
    mask: np.ndarray
    tpms: dict[str, np.ndarray | None]
    source: str = ""


@dataclass
class IQMResult:
    """The IQMs of one image.

    Parameters
    ----------
    metrics : dict
        Every IQM name -> value (None: n/a).
    skipped : list of str
        Why the background IQMs are n/a on this image (skull-stripped, defaced): what the
        image could not be checked for.
    notes : list of str
        Other n/a values and why (no template-space image, no CSF map installed, an IQM
        undefined on this image).
    timings : dict
        Seconds per step (the benchmark reads them).
    provenance : dict
        How they were made (background verdict, N4 settings, mixture means).
    arrays : dict
        With ``keep_arrays``: the 1-D arrays the IQMs came from (``values``: the corrected
        brain then the raw air; ``csf``, ``gm``, ``wm``, ``bg``: their weights on
        ``values``; ``fov``, ``head``: the raw field of view and its head mask;
        ``air_far``, ``art``: QI1's masks over the field of view; ``wm2max_mu``), for
        comparing with MRIQC's functions (:mod:`bids_qc.training.iqm_mriqc`).
    """

    metrics: dict[str, float | None]
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)


def load_inputs(t1w: str | Path, seg: str | Path) -> tuple[np.ndarray, np.ndarray,
                                                            np.ndarray, list[str]]:
    """The raw T1w and its segmentation resampled (nearest neighbour) onto its grid.

    Returns
    -------
    image, affine, labels, warnings
        float32 image, its affine, int32 labels on its grid, loader warnings.
    """
    loaded = load_image(t1w, role="T1w")
    image = np.asanyarray(loaded.img.dataobj, dtype=np.float32)
    affine = np.asarray(loaded.img.affine, dtype=np.float64)
    seg_loaded = load_labels(seg, role="segmentation")
    labels = resample_to_grid(np.asanyarray(seg_loaded.img.dataobj), seg_loaded.img.affine,
                              image.shape, affine, order=0)
    return image, affine, labels, list(loaded.warnings) + list(seg_loaded.warnings)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if len(present) == len(values) else None


def compute_iqms(image: np.ndarray, affine: np.ndarray, labels: np.ndarray,
                 seg_kind: str = "aseg", template: TemplateImage | None = None,
                 n4: N4Settings | None = None, random_state: int = 0,
                 keep_arrays: bool = False) -> IQMResult:
    """Every IQM of a raw T1w (see :mod:`bids_qc.iqms.definitions`).

    Parameters
    ----------
    image : ndarray
        The raw T1w (3-D, its own grid).
    affine : ndarray
        Its voxel-to-world affine (voxel size, and which way is up).
    labels : ndarray of int
        Its segmentation, on the same grid (:func:`load_inputs`).
    seg_kind : {"aseg", "tissue"}
        FreeSurfer codes or fMRIPrep's 3-class dseg.
    template : TemplateImage, optional
        The T1w in template space, for ``tpm_overlap_*`` (n/a without).
    n4 : N4Settings, optional
        The bias-field settings.
    random_state : int
        Seed of the mixture's subsample.
    keep_arrays : bool
        Keep the arrays behind the IQMs in ``IQMResult.arrays`` (background usable only).

    Returns
    -------
    IQMResult

    Raises
    ------
    ValueError
        When the segmentation's brain is smaller than ``MIN_BRAIN_ML`` on the image's grid,
        or lacks one of the three tissues.
    """
    clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    if labels.shape != image.shape:
        raise ValueError(f"segmentation {labels.shape} and image {image.shape} differ in shape")
    data = np.maximum(np.asarray(image, dtype=np.float32), 0)
    metrics: dict[str, float | None] = dict.fromkeys(IQM_NAMES)
    skipped: list[str] = []
    notes: list[str] = []
    brain, seeds = seed_classes(labels, seg_kind)
    affine = np.asarray(affine, dtype=np.float64)
    zooms = tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    brain_ml = float(brain.sum()) * float(np.prod(zooms)) / 1000.0
    if brain_ml < MIN_BRAIN_ML:
        raise ValueError(f"the segmentation's brain covers {brain_ml:.0f} ml of the T1w "
                         f"(< {MIN_BRAIN_ML:g} ml): a failed segmentation, or not this "
                         "image's")
    coarse = Coarse.for_grid(data.shape, zooms)
    masks = head_masks(data, brain, affine, coarse)
    problem = background_problem(data, brain, masks, coarse)
    lap("masks")

    bias = n4_field(data, brain, zooms, n4)
    metrics.update(measures.inu_stats(bias[brain]))
    index = np.flatnonzero(brain.ravel())
    corrected = data.ravel()[index] / bias.ravel()[index]  # only the brain is needed
    del bias
    lap("n4")

    tissues = tissue_posteriors(corrected, index, seeds.ravel()[index], random_state)
    order = np.argsort(corrected, kind="stable")  # one sort serves the three tissues
    stats = {t: measures.summary_stats(corrected, tissues.pvms[i], order)
             for i, t in enumerate(TISSUES)}
    lap("tissues")

    for t in TISSUES:
        for s in SUMMARY_STATS:
            metrics[f"summary_{t}_{s}"] = stats[t][s]
    wm, gm = stats["wm"], stats["gm"]
    for t in TISSUES:
        st = stats[t]
        metrics[f"snr_{t}"] = (measures.snr(st["median"], st["stdv"], st["n"])
                               if st["n"] is not None else None)
    metrics["snr_total"] = _mean([metrics[f"snr_{t}"] for t in TISSUES])
    if None not in (wm["median"], gm["median"]):
        metrics["cjv"] = measures.cjv(wm["median"], gm["median"], wm["mad"], gm["mad"])
    metrics.update(measures.volume_fractions(tissues.pvms, TISSUES))
    metrics.update(measures.rpve(tissues.pvms, TISSUES))
    box = bounding_box(brain, [1, 1, 1])  # the brain's box: a third of a head's grid
    metrics.update(fwhm(data[box], brain[box]))
    lap("tissue_iqms")

    air_sd = 0.0  # cnr's air term: 0 where the background is unusable
    kept: dict = {}
    if problem is None:
        air = data[masks.air]
        bg = measures.summary_stats(air)
        for s in SUMMARY_STATS:
            metrics[f"summary_bg_{s}"] = bg[s]
        air_sd = bg["stdv"] or 0.0
        for t in TISSUES:
            if stats[t]["median"] is not None:
                metrics[f"snrd_{t}"] = measures.snr_dietrich(stats[t]["median"], air_sd)
        metrics["snrd_total"] = _mean([metrics[f"snrd_{t}"] for t in TISSUES])
        fov = data[masks.fov]
        metrics["efc"] = measures.efc(fov)
        metrics["fber"] = measures.fber(data[masks.head], air)
        wm_raw = data.ravel()[tissues.index][tissues.pvms[2] > 0.5]
        if wm_raw.size:
            metrics["wm2max"] = measures.wm2max(float(np.median(wm_raw)), fov)
        found = artifacts.artefact_mask(data, masks.air_far)
        metrics["qi_1"] = artifacts.qi_1(found, masks.air_far)
        metrics["qi_2"] = artifacts.qi_2(data[masks.air_far & ~found])
        if keep_arrays:
            kept = _arrays(corrected, tissues, air, fov, masks, found)
            kept["wm2max_mu"] = np.asarray(float(np.median(wm_raw)) if wm_raw.size else 0.0)
    else:
        skipped.append(f"{', '.join(_compact(BACKGROUND_IQMS))} are n/a: {problem}")
    if None not in (wm["median"], gm["median"], wm["stdv"], gm["stdv"]):
        metrics["cnr"] = measures.cnr(wm["median"], gm["median"], wm["stdv"], gm["stdv"],
                                      air_sd)
    lap("background_iqms")

    tpm_source = ""
    if template is None:
        notes.append("tpm_overlap_* are n/a: no template-space T1w (no template-space "
                       "image or readable transform in the derivatives)")
    else:
        from .tpm import tpm_overlap

        tpm_source = template.source
        metrics.update(tpm_overlap(template.image, template.mask, template.tpms,
                                   random_state))
        missing = [t for t in TISSUES if template.tpms.get(t) is None]
        if missing:
            notes.append(f"{', '.join('tpm_overlap_' + t for t in missing)} n/a: no "
                           f"{'/'.join(m.upper() for m in missing)} probability map is "
                           f"installed for this template ({template.source or 'none'}; a "
                           "local TemplateFlow copy with the space's probsegs adds it)")
        lap("tpm")

    explained = set(BACKGROUND_IQMS) if problem else set()
    explained |= {f"tpm_overlap_{t}" for t in TISSUES}
    undefined = [n for n in IQM_NAMES if metrics[n] is None and n not in explained]
    if undefined:
        notes.append(f"{', '.join(undefined)} undefined on this image: a zero denominator "
                       "or spread (e.g. qi_2 when the air is not noise-like, as quantised "
                       "air whose quartiles coincide)")
    return IQMResult(
        metrics=metrics, skipped=skipped, notes=notes, timings=timings, arrays=kept,
        provenance={"background": problem or "usable",
                    "n4": asdict(n4 or N4Settings()),
                    "tissue_means": [round(m, 3) for m in tissues.means],
                    "tpm_source": tpm_source},
    )


def _arrays(corrected, tissues, air, fov, masks, found) -> dict[str, np.ndarray]:
    """The 1-D arrays of :attr:`IQMResult.arrays`."""
    n, m = corrected.size, air.size
    pad = np.zeros(m, dtype=np.float32)
    return {
        "values": np.concatenate([corrected.astype(np.float32), air.astype(np.float32)]),
        **{t: np.concatenate([tissues.pvms[i], pad]) for i, t in enumerate(TISSUES)},
        "bg": np.concatenate([np.zeros(n, np.float32), np.ones(m, np.float32)]),
        "fov": fov.ravel(), "head": masks.head[masks.fov].ravel(),
        "air_far": masks.air_far[masks.fov].ravel(), "art": found[masks.fov].ravel(),
    }


def _compact(names: tuple[str, ...]) -> list[str]:
    """``snrd_csf, snrd_gm, ...`` shortened to ``snrd_*`` for families, in order."""
    out: list[str] = []
    for name in names:
        family = name.rsplit("_", 1)[0] + "_*" if name.startswith(("snrd_", "summary_bg_")) \
            else name
        if family not in out:
            out.append(family)
    return out
