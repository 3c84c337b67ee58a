"""The image quality metrics: formulas, masks, and the direction of each IQM on graded
artefacts added to a generated phantom (bids_qc.synth.artefacts)."""

from __future__ import annotations

import functools
import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bids_qc.iqms import BACKGROUND_IQMS, IQM_NAMES, IQMS, get_iqm, measures
from bids_qc.iqms.artifacts import fit_chi, qi_2
from bids_qc.iqms.compute import compute_iqms, load_inputs
from bids_qc.iqms.smoothness import fwhm
from bids_qc.iqms.tissues import seed_classes
from bids_qc.synth import artefacts as art

#: Rician noise of the "clean" phantom (WM is 900).
NOISE = 8.0


@functools.cache
def _phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return art.phantom_t1w()


@functools.cache
def _iqms(artefact: str, level: float) -> dict[str, float | None]:
    """The IQMs of the phantom with one artefact at one level (then Rician noise)."""
    image, labels, affine = _phantom()
    noise = NOISE
    if artefact == "noise":
        noise = level
    elif artefact == "bias":
        image = art.bias_field(image, level)
    elif artefact == "ghosting":
        image = art.ghosting(image, level)
    elif artefact.startswith("blur"):
        image = art.blur(image, level)
    elif artefact == "motion":
        image = art.motion(image, 4.0, level)
    elif artefact == "ringing":
        image = art.ringing(image, level)
    noisy = art.rician_noise(image, noise, seed=1)
    return compute_iqms(noisy, affine, labels).metrics


def _worse(name: str, values: list[float]) -> bool:
    """Whether each value is strictly worse than the one before, by the IQM's direction."""
    better = get_iqm(name).better
    if better == "closer to 1":
        values = [-abs(v - 1.0) for v in values]
        better = "higher"
    steps = np.diff(values)
    return bool(np.all(steps < 0) if better == "higher" else np.all(steps > 0))


#: artefact -> (levels, mildest first; the IQMs that must get worse at every step). Each IQM
#: is checked against the artefacts it is meant to see.
GRADED = {
    "noise": ((5.0, 10.0, 20.0, 40.0),
              ("snr_csf", "snr_gm", "snr_wm", "snr_total", "snrd_csf", "snrd_gm", "snrd_wm",
               "snrd_total", "cnr", "cjv", "efc", "fber", "wm2max")),
    "bias": ((0.0, 0.2, 0.4, 0.6), ("inu_range", "inu_med", "cjv", "cnr", "snr_total",
                                    "wm2max")),
    "ghosting": ((0.07, 0.09, 0.11, 0.13, 0.15), ("qi_1", "efc", "fber", "snrd_total",
                                                   "cnr")),
    "blur": ((0.01, 1.0, 1.5, 2.0), ("fwhm_x", "fwhm_y", "fwhm_z", "fwhm_avg", "rpve_gm",
                                     "rpve_wm", "cjv", "cnr", "efc", "fber")),
    "blur_mild": ((0.75, 1.0, 1.25, 1.5), ("rpve_csf",)),
    "ringing": ((1.0, 0.7, 0.5, 0.35), ("qi_2", "cjv", "cnr", "snr_total", "efc", "fber",
                                        "rpve_gm")),
    "motion": ((0.0, 0.1, 0.2), ("efc", "fber", "cjv", "cnr", "snr_total")),
}


@pytest.mark.parametrize("artefact", sorted(GRADED))
def test_each_iqm_worsens_with_its_artefact(artefact):
    levels, names = GRADED[artefact]
    runs = [_iqms(artefact, level) for level in levels]
    for name in names:
        values = [r[name] for r in runs]
        assert None not in values, (artefact, name, values)
        assert _worse(name, values), f"{name} does not worsen with {artefact}: {values}"


def test_every_directional_iqm_is_checked_somewhere():
    checked = {n for _, names in GRADED.values() for n in names} | {"qi_2"}
    directional = {q.name for q in IQMS if q.better != "none"
                   and not q.name.startswith("tpm_overlap_")}  # tested on a template below
    assert directional <= checked, sorted(directional - checked)


def test_qi_2_rises_with_faint_ghosts():
    values = [_iqms("ghosting", a)["qi_2"] for a in (0.0, 0.03, 0.06)]
    assert values[0] < values[1] < values[2]


def test_inu_metrics_follow_a_multiplicative_bias_field():
    clean, strong = _iqms("bias", 0.0), _iqms("bias", 0.6)
    assert clean["inu_range"] < 0.05 < 0.2 < strong["inu_range"]
    assert abs(clean["inu_med"] - 1) < 0.01


def test_clean_phantom_values_are_plausible():
    m = _iqms("noise", NOISE)
    assert set(m) == set(IQM_NAMES)
    # the mixture finds the phantom's tissue intensities (CSF 250, GM 600, WM 900)
    assert m["summary_wm_median"] == pytest.approx(900, rel=0.03)
    assert m["summary_gm_median"] == pytest.approx(600, rel=0.05)
    assert m["summary_csf_median"] == pytest.approx(250, rel=0.1)
    assert sum(m[f"icvs_{t}"] for t in ("csf", "gm", "wm")) == pytest.approx(1.0)
    assert m["qi_1"] == 0.0 and 0 < m["efc"] < 1 and m["fber"] > 100
    # Rayleigh noise of sigma 8: the air's SD is 0.655 x 8, so Dietrich's SNR is 900 / 8
    assert m["snrd_wm"] == pytest.approx(900 / 8, rel=0.1)
    assert m["summary_bg_n"] > 1000 and m["summary_bg_k"] is not None
    assert all(m[f"tpm_overlap_{t}"] is None for t in ("csf", "gm", "wm"))


def test_background_iqms_are_na_on_a_skull_stripped_image():
    image, labels, affine = _phantom()
    brain, _ = seed_classes(labels)
    stripped = art.rician_noise(image, NOISE, seed=1) * ndimage.binary_dilation(brain)
    result = compute_iqms(stripped, affine, labels)
    for name in BACKGROUND_IQMS:
        assert result.metrics[name] is None, name
    assert any("skull-stripped" in s for s in result.skipped)
    assert result.provenance["background"].startswith("skull-stripped")
    assert result.metrics["snr_wm"] is not None and result.metrics["cnr"] is not None


def test_background_iqms_are_na_on_a_defaced_image():
    image, labels, affine = _phantom()
    noisy = art.rician_noise(image, NOISE, seed=1)
    i, j, k = np.meshgrid(*[np.arange(n) for n in noisy.shape], indexing="ij", sparse=True)
    # a defacing mask: everything in front of an oblique plane through the lower face is 0
    face = (j - 0.6 * noisy.shape[1]) + 0.8 * (0.45 * noisy.shape[2] - k) > 0
    defaced = np.where(face & ~seed_classes(labels)[0], 0.0, noisy).astype(np.float32)
    result = compute_iqms(defaced, affine, labels)
    assert result.metrics["efc"] is None and result.metrics["qi_1"] is None
    assert any("defaced" in s for s in result.skipped)


def test_zero_padding_is_a_frame_not_defacing():
    image, labels, affine = _phantom()
    noisy = np.pad(art.rician_noise(image, NOISE, seed=1), ((0, 0), (0, 0), (6, 6)))
    padded_labels = np.pad(labels, ((0, 0), (0, 0), (6, 6)))
    result = compute_iqms(noisy, affine, padded_labels)
    assert result.provenance["background"] == "usable"
    assert result.metrics["efc"] == pytest.approx(_iqms("noise", NOISE)["efc"], rel=0.02)


def test_fmriprep_tissue_dseg_seeds_the_same_classes():
    image, labels, affine = _phantom()
    brain, seeds = seed_classes(labels)
    dseg = np.select([seeds == 1, seeds == 2, seeds == 3], [3, 1, 2], 0).astype(np.int32)
    dseg[brain & (seeds == 0)] = 1
    result = compute_iqms(art.rician_noise(image, NOISE, seed=1), affine, dseg, "tissue")
    assert result.metrics["summary_wm_median"] == pytest.approx(900, rel=0.03)


def test_seed_classes_of_freesurfer_codes():
    labels = np.array([[[0, 2, 3, 4, 41, 1035, 2035, 3001, 5001, 507, 511, 165, 16, 10]]])
    brain, seeds = seed_classes(labels)
    assert brain.tolist() == [[[False] + [True] * 8 + [False] * 3 + [True] * 2]]
    assert seeds.tolist() == [[[0, 3, 2, 1, 3, 2, 2, 3, 3, 0, 0, 0, 3, 2]]]


def test_a_segmentation_without_a_tissue_is_refused():
    image, labels, affine = _phantom()
    no_csf = np.where(np.isin(labels, (4, 43, 24)), 0, labels)
    with pytest.raises(ValueError, match="CSF"):
        compute_iqms(image, affine, no_csf)


def test_load_inputs_resamples_the_segmentation(tmp_path):
    image, labels, affine = _phantom()
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "t1w.nii.gz")
    fine = np.repeat(np.repeat(np.repeat(labels, 2, 0), 2, 1), 2, 2)
    fine_affine = affine.copy()
    fine_affine[:3, :3] /= 2
    fine_affine[:3, 3] -= 0.25 * np.diag(affine)[:3]  # voxel centres of the finer grid
    nib.save(nib.Nifti1Image(fine, fine_affine), tmp_path / "seg.nii.gz")
    got, got_affine, resampled, _ = load_inputs(tmp_path / "t1w.nii.gz", tmp_path / "seg.nii.gz")
    assert np.allclose(got_affine, affine) and got.shape == labels.shape
    assert (resampled == labels).mean() > 0.99


# -- formulas -----------------------------------------------------------------------------

def test_snr_formulas():
    assert measures.snr(100.0, 10.0, 2.0) == pytest.approx(100 / (10 * math.sqrt(2)))
    assert measures.snr(100.0, 0.0, 50) is None and measures.snr(1.0, 1.0, 1) is None
    assert measures.snr_dietrich(100.0, 10.0) == pytest.approx(6.551364, rel=1e-6)
    assert measures.cnr(900, 600, 30, 40) == pytest.approx(300 / 50)
    assert measures.cnr(900, 600, 30, 40, 50.0) < measures.cnr(900, 600, 30, 40)
    assert measures.cjv(900, 600, 30, 60) == pytest.approx(0.3)


def test_efc_fber_wm2max_jaccard():
    assert measures.efc(np.full(1000, 7.0)) == pytest.approx(1.0)
    one_hot = np.zeros(1000)
    one_hot[3] = 5.0
    assert measures.efc(one_hot) == pytest.approx(0.0, abs=1e-9)
    assert measures.fber(np.full(10, 10.0), np.full(10, 2.0)) == pytest.approx(25.0)
    assert measures.fber(np.full(10, 10.0), np.zeros(10)) is None
    assert measures.wm2max(50.0, np.arange(101.0)) == pytest.approx(50 / 99.95)
    a = np.array([0.2, 0.8, 1.0])
    assert measures.fuzzy_jaccard(a, a) == pytest.approx(1.0)
    assert measures.fuzzy_jaccard(a, np.zeros(3)) == 0.0


def test_partial_volume_measures():
    pvms = np.array([[1.0, 0.5, 0.0, 0.0], [0.0, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    fractions = measures.volume_fractions(pvms, ("csf", "gm", "wm"))
    assert fractions == pytest.approx({"icvs_csf": 0.375, "icvs_gm": 0.375, "icvs_wm": 0.25})
    r = measures.rpve(pvms, ("csf", "gm", "wm"))
    assert r["rpve_csf"] == pytest.approx(0.5 / 1.5) and r["rpve_wm"] == 0.0


def test_summary_stats():
    rng = np.random.default_rng(0)
    x = rng.normal(100.0, 10.0, 20000)
    s = measures.summary_stats(x)
    assert s["mean"] == pytest.approx(100, abs=0.5) and s["stdv"] == pytest.approx(10, rel=0.03)
    assert s["mad"] == pytest.approx(10, rel=0.05) and abs(s["k"]) < 0.1
    assert s["p05"] == pytest.approx(100 - 16.45, abs=0.6) and s["n"] == 20000
    weighted = measures.summary_stats(np.array([1.0, 3.0, 5.0, 7.0]),
                                      np.array([1.0, 1.0, 0.5, 0.0]))
    assert weighted["mean"] == pytest.approx(6.5 / 2.5) and weighted["n"] == 2.5
    assert weighted["median"] == 3.0  # cumulative weight 2 of 2.5 reaches half at 3
    assert weighted["stdv"] == pytest.approx(np.sqrt((2.56 + 0.16 + 0.5 * 5.76) / 2.5))
    assert measures.summary_stats(np.array([1.0]))["mean"] is None
    assert measures.weighted_quantiles(np.arange(10.0), np.ones(10), (0.5,)) == [4.0]


def test_fwhm_of_smoothed_white_noise():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(48, 48, 48))
    for target in (3.0, 5.0):
        smooth = ndimage.gaussian_filter(noise, target / math.sqrt(8 * math.log(2)))
        got = fwhm(smooth, np.ones(smooth.shape, bool))
        assert got["fwhm_avg"] == pytest.approx(target, rel=0.1)
    sharper = fwhm(noise, np.ones(noise.shape, bool))
    assert sharper["fwhm_x"] is None or sharper["fwhm_x"] < 1.5


def test_qi_2_on_pure_noise_and_with_a_tail():
    rng = np.random.default_rng(0)
    rayleigh = np.hypot(rng.normal(0, 20, 400_000), rng.normal(0, 20, 400_000))
    df, scale = fit_chi(rayleigh)
    assert df == pytest.approx(2.0, rel=0.05) and scale == pytest.approx(20.0, rel=0.03)
    tail = np.concatenate([rayleigh, rng.normal(100.0, 20.0, 10_000)])
    assert qi_2(rayleigh) < 0.005 < qi_2(tail)
    assert qi_2(rayleigh[:10]) is None


def test_iqm_definitions():
    assert len(IQM_NAMES) == len(set(IQM_NAMES)) == 62
    assert get_iqm("cjv").better == "lower" and get_iqm("snr_wm").better == "higher"
    assert get_iqm("fwhm_avg").unit == "voxels" and get_iqm("summary_wm_n").unit == "voxels"
    assert set(BACKGROUND_IQMS) >= {"efc", "fber", "qi_1", "qi_2", "wm2max", "snrd_total",
                                    "summary_bg_mean"}
    with pytest.raises(ValueError):
        get_iqm("snr")


def test_tpm_overlap_falls_with_misregistration():
    from bids_qc.iqms.tpm import load_tpms, tpm_files, tpm_overlap

    files, source = tpm_files("MNI152NLin2009aSym")
    if source != "nilearn":
        pytest.skip("TemplateFlow TPMs shadow nilearn's here")
    assert files["csf"] is None
    t1 = nib.load(str(files["gm"]).replace("_gm_", "_t1_"))
    affine = t1.affine.copy()
    affine[:3, :3] *= 3  # a 3 mm grid keeps the test fast
    shape = tuple(n // 3 for n in t1.shape)
    from bids_qc.transforms import resample_to_grid

    image = resample_to_grid(np.asanyarray(t1.dataobj, np.float32), t1.affine, shape, affine, 1)
    tpms = load_tpms(files, shape, affine)
    mask = ndimage.binary_dilation(tpms["gm"] + tpms["wm"] > 0.2, iterations=2)
    aligned = tpm_overlap(image, mask, tpms)
    shifted = tpm_overlap(np.roll(image, 3, axis=1), mask, tpms)
    assert aligned["tpm_overlap_csf"] is None
    for t in ("gm", "wm"):
        assert aligned[f"tpm_overlap_{t}"] > 0.5
        assert shifted[f"tpm_overlap_{t}"] < aligned[f"tpm_overlap_{t}"] - 0.1


# -- the app: schema, nipype stage, report --------------------------------------------------

def test_iqm_columns_are_in_the_schema_with_units_and_scores():
    from bids_qc import schema

    for q in IQMS:
        col = schema.column(q.name)
        assert col.producer == "iqms" and col.unit == q.unit and col.kind == "float"
        assert q.reads in col.description and "Advisory" in col.description
        assert (q.name in schema.RZ_COLUMNS) == (not q.descriptive), q.name
    assert "rz_cjv" in schema.column_names() and "rz_summary_wm_mean" not in schema.RZ_COLUMNS
    assert set(IQM_NAMES) <= set(schema.METRIC_COLUMNS)
    # last among the participant columns: no earlier column moved
    participant = schema.column_names("participant")
    assert participant[-len(IQM_NAMES):] == list(IQM_NAMES)


def _row(tmp_path, with_seg=True):
    from bids_qc.inputs import QCInput, qc_input_to_dict

    image, labels, affine = _phantom()
    t1w, seg = tmp_path / "sub-01_T1w.nii.gz", tmp_path / "aseg.nii.gz"
    nib.save(nib.Nifti1Image(art.rician_noise(image, NOISE, seed=1), affine), t1w)
    nib.save(nib.Nifti1Image(labels, affine), seg)
    row = QCInput("sub-01_T1w", {"subject": "01"}, t1w=t1w, seg=seg if with_seg else None,
                  seg_kind="aseg" if with_seg else None,
                  seg_source="freesurfer" if with_seg else None)
    return qc_input_to_dict(row)


def test_the_iqm_stage_computes_and_says_why_not(tmp_path, monkeypatch):
    from bids_qc.interfaces.iqms import ImageQualityMetrics

    monkeypatch.chdir(tmp_path)
    res = ImageQualityMetrics(qc_input=_row(tmp_path), classic_result={}).run()
    result = res.outputs.result
    assert result["stage"] == "iqms" and not result["errors"] and not result["skipped"]
    assert result["metrics"]["cjv"] == pytest.approx(_iqms("noise", NOISE)["cjv"])
    assert result["provenance"]["background"] == "usable"
    assert any("tpm_overlap_*" in n for n in result["provenance"]["notes"])
    bare = ImageQualityMetrics(qc_input=_row(tmp_path, with_seg=False)).run().outputs.result
    assert all(v is None for v in bare["metrics"].values())
    assert "no segmentation" in bare["skipped"][0]["reason"] and not bare["errors"]


def test_a_failing_segmentation_skips_the_iqms_without_failing_the_image(tmp_path,
                                                                        monkeypatch):
    from bids_qc.interfaces.iqms import ImageQualityMetrics

    monkeypatch.chdir(tmp_path)
    row = _row(tmp_path)
    labels = np.zeros((72, 72, 72), np.int32)
    labels[30:34, 30:34, 30:34] = 2  # a few voxels: a failed segmentation
    nib.save(nib.Nifti1Image(labels, _phantom()[2]), row["seg"])
    result = ImageQualityMetrics(qc_input=row).run().outputs.result
    assert not result["errors"] and "100 ml" in result["skipped"][0]["reason"]


def test_the_participant_report_explains_the_iqms(tmp_path, monkeypatch):
    from bids_qc.interfaces.iqms import ImageQualityMetrics
    from bids_qc.reports.participant import image_quality, participant_context
    from bids_qc.reports.render import render
    from bids_qc.results import assemble

    monkeypatch.chdir(tmp_path)
    row = _row(tmp_path)
    stage = ImageQualityMetrics(qc_input=row).run().outputs.result
    result = assemble(row, [stage], {"inputs": {}}, "cpu")
    section = image_quality(result)
    headings = [g["heading"] for g in section["groups"]]
    assert headings[:2] == ["Noise", "Contrast"] and "Tissues" in headings
    assert any("tpm_overlap_*" in n for n in section["notes"])
    context = participant_context(result, tmp_path, stages=[stage], qc_input=row)
    assert not any(r["name"] == "cjv" for r in context["metric_rows"])
    html = render("participant.html.j2", **context)
    assert 'id="image-quality"' in html and "<code>cjv</code>" in html
    assert "Coefficient of joint variation" in html


def test_validation_page_settings_name_real_iqms_and_artefacts():
    from bids_qc.training import iqm_validation as val

    assert set(val.EXPECTED) == set(val.ARTEFACTS)
    for names in val.EXPECTED.values():
        for name in names:
            assert get_iqm(name).better != "none"
    image = _phantom()[0]
    for artefact, levels in val.ARTEFACTS.items():
        mild = val.add_artefact(image, artefact, levels[0], 900.0)
        assert np.allclose(mild, image, atol=1e-2), artefact
        assert not np.allclose(val.add_artefact(image, artefact, levels[-1], 900.0), image)
    with pytest.raises(ValueError):
        val.add_artefact(image, "spikes", 1.0, 900.0)
    assert val._badness("snr_wm", 10.0) < val._badness("snr_wm", 5.0)
    assert val._badness("inu_med", 1.0) < val._badness("inu_med", 0.8)
