"""The IQM validation page (``docs/iqms.md``), generated from a run on real images.

``python -m bids_qc.training.iqm_validation --data ../shared/data --work DIR`` computes the
IQMs (:mod:`bids_qc.iqms`) of

1. real whole-head T1w images (IXI test people: Philips 3T, 2 mm, with their DLMUSE
   segmentations mapped to FreeSurfer codes) with graded artefacts added
   (:mod:`bids_qc.synth.artefacts`), and says, for every IQM and artefact, whether the IQM
   worsens at every step in every person;
2. the Siemens XA30 pair (one session with and without the scanner's intensity
   normalisation): the INU metrics of both, and the true normalisation field (the ratio of
   the two images) as the reference;
3. real images whose background cannot be used (skull-stripped, defaced) and ones whose
   can, against the background rule (:mod:`bids_qc.iqms.masks`).

Images without a segmentation of their own (2 and 3) are segmented by VINN
(experimental: it only supplies the brain mask and tissue seeds here), cached in ``DIR``.
Nothing here is fitted: the images only measure the IQMs as shipped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from ..iqms.compute import compute_iqms, load_inputs
from ..iqms.definitions import IQMS, get_iqm
from ..synth import artefacts as art
from .realdata import ixi_people, muse_to_freesurfer

#: Artefact -> (levels, mildest first, each relative to the image: noise and ghost
#: amplitudes as a share of the WM median; bias amplitude; blur FWHM in voxels; share of
#: k-space lines moved 3 voxels; share of k-space kept).
ARTEFACTS: dict[str, tuple[float, ...]] = {
    "Rician noise": (0.0, 0.02, 0.04, 0.08),
    "bias field": (0.0, 0.2, 0.4, 0.6),
    "ghosting": (0.0, 0.05, 0.1, 0.2),
    "blur": (0.0, 1.5, 2.25, 3.0),
    "motion": (0.0, 0.1, 0.2, 0.3),
    "ringing": (1.0, 0.8, 0.6, 0.45),
}

#: The artefacts each IQM is meant to see (the page checks these; the matrix shows all).
EXPECTED: dict[str, tuple[str, ...]] = {
    "Rician noise": ("snr_total", "snrd_total", "cnr", "cjv", "efc", "fber"),
    "bias field": ("inu_range",),
    "ghosting": ("qi_1", "qi_2", "efc", "fber", "snrd_total"),
    "blur": ("fwhm_avg", "rpve_gm", "cjv", "cnr", "efc"),
    "motion": ("efc", "fber", "cjv", "cnr", "qi_1"),
    "ringing": ("qi_2", "cjv", "cnr", "rpve_gm"),
}


def add_artefact(image: np.ndarray, name: str, level: float, wm: float) -> np.ndarray:
    """``image`` with one artefact at ``level`` (see :data:`ARTEFACTS`)."""
    if name == "Rician noise":
        return art.rician_noise(image, level * wm, seed=1) if level else image
    if name == "bias field":
        return art.bias_field(image, level)
    if name == "ghosting":
        return art.ghosting(image, level)
    if name == "blur":
        return art.blur(image, level) if level else image
    if name == "motion":
        return art.motion(image, 3.0, level, seed=1) if level else image
    if name == "ringing":
        return art.ringing(image, level) if level < 1 else image
    raise ValueError(f"unknown artefact {name!r}")


def _badness(name: str, value: float) -> float:
    """``value`` oriented so that larger is worse (None-safe callers only)."""
    better = get_iqm(name).better
    if better == "higher":
        return -value
    if better == "closer to 1":
        return abs(value - 1.0)
    return value


def graded(data: Path, people: int) -> tuple[dict, list[str]]:
    """IQMs of IXI test people under every artefact and level.

    Returns
    -------
    runs : dict
        ``(person, artefact) -> list of metrics dicts`` (one per level).
    names : list of str
        The people.
    """
    runs: dict = {}
    names = []
    for person in ixi_people(data, "test")[:people]:
        img = nib.load(str(person.t1w))
        image = np.asanyarray(img.dataobj, dtype=np.float32)
        labels = muse_to_freesurfer(np.asanyarray(nib.load(str(person.dlmuse)).dataobj))
        wm = float(np.median(image[np.isin(labels, (2, 41))]))
        names.append(person.item)
        for artefact, levels in ARTEFACTS.items():
            runs[person.item, artefact] = [
                compute_iqms(add_artefact(image, artefact, lv, wm), img.affine, labels).metrics
                for lv in levels]
    return runs, names


def _monotone(values: list[float | None], name: str) -> bool | None:
    if any(v is None for v in values):
        return None
    bad = [_badness(name, v) for v in values]
    return bool(np.all(np.diff(bad) > 0))


def _spearman_sign(values: list[float | None], name: str) -> float | None:
    """Rank correlation of level and badness over the levels with a value (None with
    fewer than 3)."""
    kept = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(kept) < 3:
        return None
    bad = np.argsort(np.argsort([_badness(name, v) for _, v in kept]))
    rank = np.arange(len(kept))
    return float(np.corrcoef(bad, rank)[0, 1]) if np.ptp(bad) else 0.0


def graded_section(runs: dict, names: list[str]) -> list[str]:
    """The markdown of part 1."""
    lines = [
        "## Graded artefacts on real images",
        "",
        f"{len(names)} IXI test people ({', '.join(names)}; Philips 3T, whole head, 2 mm; "
        "DLMUSE segmentations mapped to FreeSurfer codes), each artefact added at the "
        "levels below (`bids_qc/synth/artefacts.py`). Noise and ghost amplitudes are "
        "shares of the image's white-matter median; the bias field multiplies by "
        "exp(amplitude x a smooth field in [-1, 1]); blur is a Gaussian FWHM in voxels; "
        "motion moves that share of the k-space lines 3 voxels; ringing keeps that share "
        "of k-space.",
        "",
        "| artefact | levels |",
        "|---|---|",
        *[f"| {a} | {', '.join(f'{v:g}' for v in lv)} |" for a, lv in ARTEFACTS.items()],
        "",
        "### The IQMs each artefact should move",
        "",
        "\"worse at every step\": the IQM moves in its documented bad direction from each "
        "level to the next, in how many of the people; the values are the people's means.",
        "",
        "| artefact | IQM | better | worse at every step | mean value per level |",
        "|---|---|---|---|---|",
    ]
    for artefact, expected in EXPECTED.items():
        for name in expected:
            series = [runs[p, artefact] for p in names]
            ok = [_monotone([m[name] for m in s], name) for s in series]
            values = [[m[name] for m in s] for s in series]
            means = [np.mean([v[i] for v in values if v[i] is not None])
                     if any(v[i] is not None for v in values) else None
                     for i in range(len(ARTEFACTS[artefact]))]
            shown = ", ".join("n/a" if m is None else f"{m:.4g}" for m in means)
            count = sum(o is True for o in ok)
            lines.append(f"| {artefact} | `{name}` | {get_iqm(name).better} | "
                         f"{count} of {len(names)} | {shown} |")
    lines += [
        "",
        "### Every IQM against every artefact",
        "",
        "Spearman correlation between the level and how bad the value is (oriented by the "
        "IQM's direction), averaged over the people: +1 the IQM worsens steadily, -1 it "
        "improves, near 0 it does not see the artefact. Descriptive IQMs (summary "
        "statistics, `icvs_*`) have no direction and are left out.",
        "",
        "| IQM | " + " | ".join(ARTEFACTS) + " |",
        "|---|" + "---|" * len(ARTEFACTS),
    ]
    for q in IQMS:
        if q.better == "none" or q.name.startswith("tpm_overlap_"):
            continue
        cells = []
        for artefact in ARTEFACTS:
            rhos = [_spearman_sign([m[q.name] for m in runs[p, artefact]], q.name)
                    for p in names]
            rhos = [r for r in rhos if r is not None]
            cells.append(f"{np.mean(rhos):+.2f}" if rhos else "n/a")
        lines.append(f"| `{q.name}` | " + " | ".join(cells) + " |")
    return lines


def _vinn_seg(t1w: Path, work: Path) -> Path:
    """VINN's segmentation of ``t1w``, cached in ``work``."""
    out = work / (t1w.name.replace(".nii.gz", "") + "_vinn.nii.gz")
    if not out.is_file():
        from ..models.vinn import segment_image

        work.mkdir(parents=True, exist_ok=True)
        nib.save(segment_image(str(t1w)), str(out))
    return out


def inu_section(data: Path, work: Path) -> list[str]:
    """The markdown of part 2: the XA30 pair's INU metrics."""
    folder = data / "scanners"
    raw, norm = (folder / f"siemens_xa30_tfl_{k}.nii.gz" for k in ("no_norm", "norm"))
    seg = _vinn_seg(norm, work)  # one brain mask for both: the same session and grid
    rows, brain = [], None
    for label, path in (("without (no_norm)", raw), ("with (norm)", norm)):
        image, affine, labels, _ = load_inputs(path, seg)
        result = compute_iqms(image, affine, labels)
        brain = (labels > 0) & (labels < 500)
        rows.append((label, result.metrics["inu_range"], result.metrics["inu_med"]))
    a = np.asanyarray(nib.load(str(raw)).dataobj, dtype=np.float32)
    b = np.asanyarray(nib.load(str(norm)).dataobj, dtype=np.float32)
    inside = brain & (a > 0) & (b > 0)
    ratio = np.log(b[inside] / a[inside])
    ratio -= ratio.mean()
    p05, p95 = np.percentile(np.exp(ratio), [5, 95])
    lines = [
        "## Intensity non-uniformity: the Siemens XA30 pair",
        "",
        "One scan session (Siemens Prisma, XA30, TFL at 2 mm) reconstructed without and "
        "with the scanner's intensity normalisation (prescan normalise). The brain mask "
        "and tissue seeds come from VINN's segmentation of the normalised image "
        "(experimental; the same mask for both). The normalisation itself is a real bias "
        f"field: inside the brain, the ratio of the two images spans {p95 - p05:.2f} "
        "between its 5th and 95th percentiles (scaled to a geometric mean of 1, as the "
        "IQMs scale N4's field).",
        "",
        "| image | `inu_range` | `inu_med` |",
        "|---|---|---|",
        *[f"| {r[0]} | {r[1]:.3f} | {r[2]:.3f} |" for r in rows],
        "",
        "`inu_range` is larger without the normalisation: "
        + ("yes." if rows[0][1] > rows[1][1] else "**no**."),
    ]
    return lines


#: Real images for the background rule, with what the rule should say.
BACKGROUND_CASES = (
    ("ds002748 sub-01 (skull-stripped by the provider)", "ds002748/sub-01/anat/sub-01_T1w.nii.gz",
     "skull-stripped"),
    ("studyforrest sub-02 (defaced, 0.7 mm)",
     "scanners/studyforrest_sub02_defaced_0p7mm.nii.gz", "defaced"),
    ("Siemens XA30, normalised", "scanners/siemens_xa30_tfl_norm.nii.gz", "usable"),
    ("Siemens XA30, not normalised", "scanners/siemens_xa30_tfl_no_norm.nii.gz", "usable"),
)


def background_section(data: Path, work: Path, ixi_names: list[str]) -> list[str]:
    """The markdown of part 3: the background rule on real images."""
    lines = ["## The background rule on real images", "",
             "The background IQMs are n/a on skull-stripped and defaced images "
             "(rule: `bids_qc/iqms/masks.py`). VINN's segmentations give the brain masks.",
             "", "| image | expected | verdict | seconds |", "|---|---|---|---|"]
    for label, rel, expected in BACKGROUND_CASES:
        t1w = data / rel
        image, affine, labels, _ = load_inputs(t1w, _vinn_seg(t1w, work))
        start = time.perf_counter()
        try:
            verdict = compute_iqms(image, affine, labels).provenance["background"]
        except ValueError as exc:
            verdict = f"not computed: {exc}"
        took = time.perf_counter() - start
        ok = verdict.startswith(expected.split()[0]) if expected != "usable" else (
            verdict == "usable")
        lines.append(f"| {label} | {expected} | {'' if ok else '**'}{verdict}"
                     f"{'' if ok else '**'} | {took:.1f} |")
    lines += ["", f"The {len(ixi_names)} IXI people above: every one usable (their "
              "background IQMs are in the tables)."]
    return lines


def mriqc_section(data: Path, people: int, python: Path | None) -> list[str]:
    """The markdown of part 4: MRIQC's own functions on bids_qc's inputs."""
    lines = ["## Agreement with MRIQC's formulas", ""]
    if python is None:
        return lines + ["Not measured in this run (`--mriqc-python` not given)."]
    from .iqm_mriqc import mriqc_values, why

    diffs: dict[str, list[float]] = {}
    ours_all: dict[str, list[float]] = {}
    theirs_all: dict[str, list[float]] = {}
    undefined: dict[str, list] = {}
    for person in ixi_people(data, "test")[:people]:
        img = nib.load(str(person.t1w))
        labels = muse_to_freesurfer(np.asanyarray(nib.load(str(person.dlmuse)).dataobj))
        ours = compute_iqms(np.asanyarray(img.dataobj, dtype=np.float32), img.affine, labels,
                            keep_arrays=True)
        theirs = mriqc_values(python, ours.arrays)
        for name, value in theirs.items():
            mine = ours.metrics.get(name)
            if mine is None or value == -1.0 or not np.isfinite(value):
                diffs.setdefault(name, [])
                undefined.setdefault(name, []).append((mine, value))
                continue
            ours_all.setdefault(name, []).append(mine)
            theirs_all.setdefault(name, []).append(value)
            diffs.setdefault(name, []).append(abs(mine - value) / max(abs(value), 1e-12))
    lines += [
        "MRIQC cannot run offline (its workflow fetches templates from TemplateFlow and "
        "needs ANTs, AFNI and FSL), so its procedure (masks, N4 through ANTs, FSL FAST) "
        "is not reproduced. Its formulas are: `mriqc.qc.anatomical` (mriqc "
        "24.0, in a benchmark-only virtual environment) applied to the very arrays "
        f"bids_qc's IQMs came from, on the {people} clean IXI people above "
        "(`bids_qc/training/iqm_mriqc.py`). A difference here is one of definition.",
        "",
        "| IQM | bids_qc (mean) | MRIQC's function (mean) | largest difference | "
        "within 2% | why |",
        "|---|---|---|---|---|---|",
    ]
    for name, rel in diffs.items():
        if not rel:
            mine = [m for m, _ in undefined.get(name, []) if m is not None]
            shown = f"{np.mean(mine):.4g}" if mine else "n/a"
            lines.append(f"| `{name}` | {shown} | -1 (undefined) | | **no** | {why(name)} |")
            continue
        ok = max(rel) <= 0.02
        lines.append(f"| `{name}` | {np.mean(ours_all[name]):.4g} | "
                     f"{np.mean(theirs_all[name]):.4g} | {max(rel):.2%} | "
                     f"{'yes' if ok else '**no**'} | {'' if ok else why(name)} |")
    lines += ["", "Not compared: `qi_2` (MRIQC's needs its plotting package; its chi-squared "
              "fit and kernel density are a different procedure), `fwhm_*` (AFNI's "
              "3dFWHMx), `inu_*` (ANTs' N4), `tpm_overlap_*` (a template warp)."]
    return lines


def render(data: Path, work: Path, people: int, mriqc_python: Path | None = None) -> str:
    """The whole page."""
    start = time.perf_counter()
    runs, names = graded(data, people)
    lines = [
        "# Image quality metrics: validation",
        "",
        "<!-- Generated by `python -m bids_qc.training.iqm_validation`; do not edit. -->",
        "",
        "bids_qc computes MRIQC's structural image quality metrics (IQMs) of the raw T1w "
        "(Esteban et al. 2017, PLoS ONE 12(9):e0184661; MRIQC's documentation), with "
        "MRIQC's column names and units: see [Outputs](outputs.md) for each column and "
        "`bids_qc/iqms/` for each definition and every deviation from MRIQC's procedure "
        "(a Gaussian mixture seeded by the segmentation instead of FSL FAST, N4 through "
        "SimpleITK fitted in the brain on 6 mm cells, the air above the brain's lowest "
        "slice instead of MRIQC's template 'hat', QI2 fitted to quartiles and scale-free, "
        "rPVE normalised by the tissue's volume, INU field scaled to a geometric mean of "
        "1). This page measures them on real images.",
        "",
        "Agreement with MRIQC's own formulas on the same inputs is in the last section.",
        "",
        *graded_section(runs, names),
        "",
        *inu_section(data, work),
        "",
        *background_section(data, work, names),
        "",
        *mriqc_section(data, people, mriqc_python),
        "",
        f"Generated in {time.perf_counter() - start:.0f} s on 2 shared CPU cores (VINN's "
        "segmentations cached in `--work` are reused).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="../shared/data")
    parser.add_argument("--work", type=Path, required=True,
                        help="folder for VINN's segmentations (reused when present)")
    parser.add_argument("--people", type=int, default=3, help="IXI test people")
    parser.add_argument("--out", type=Path, default=Path("docs/iqms.md"))
    parser.add_argument("--mriqc-python", type=Path, default=None,
                        help="python of a venv holding mriqc (--no-deps), numpy, scipy and "
                             "statsmodels: compares MRIQC's formulas on the same inputs")
    ns = parser.parse_args(argv)
    ns.out.write_text(render(ns.data, ns.work, ns.people, ns.mriqc_python))
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
