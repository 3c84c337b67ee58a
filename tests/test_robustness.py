"""Issue 4 (robustness) at the application level: broken inputs through the real CLI.

One generated dataset holds every broken image at once (one participant run and one
group run serve most tests): each broken image must fail alone, with its JSON naming
the file, the problem and a hint, and its group row ``n/a`` with a ``qc_error``; the
repairable ones (NaN voxels, 4-D) must process with a warning; reoriented, oblique and
anisotropic images must give the plain image's values. Dataset-level problems stop the
run with their BIDS-Apps exit codes. Interruption is in ``test_interrupt.py``.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_qc import exitcodes
from bids_qc.cli import run
from bids_qc.inputs import QCInput
from bids_qc.io import resample_to_grid
from bids_qc.schema import RUN_VARIABLE_KEYS
from bids_qc.structures import STRUCTURE_NAMES
from bids_qc.templates_data import get_template
from bids_qc.workflows.base import estimate_mem_gb
from tests.fakebids import (
    ASEG_CODES,
    add_fmriprep,
    add_freesurfer,
    annex,
    make_raw,
    tiny_aseg,
    tiny_t1w,
    write_image,
)

pytestmark = pytest.mark.slow

FS = Path("derivatives") / "freesurfer"
#: Grid of the geometry cases: 60^3 voxels of 4 mm hold the whole template.
GEO = (60, 60, 60)


def _mri(root: Path, label: str) -> Path:
    return root / FS / f"sub-{label}" / "mri"


def _affine(zooms: tuple[float, float, float] = (1.0, 1.0, 1.0),
            shape: tuple[int, int, int] = (16, 16, 16)) -> np.ndarray:
    """A diagonal affine with the grid centred on the world origin."""
    aff = np.diag([*zooms, 1.0])
    aff[:3, 3] = -np.asarray(zooms) * (np.asarray(shape) - 1) / 2
    return aff


def _reoriented(data: np.ndarray, affine: np.ndarray,
                codes: str) -> tuple[np.ndarray, np.ndarray]:
    """``data`` and ``affine`` with voxel axes ``codes`` (e.g. ``LPS``), same world."""
    img = nib.Nifti1Image(data, affine)
    now = nib.orientations.io_orientation(affine)
    want = nib.orientations.axcodes2ornt(tuple(codes))
    out = img.as_reoriented(nib.orientations.ornt_transform(now, want))
    return np.ascontiguousarray(np.asanyarray(out.dataobj)), out.affine


def _rotation(degrees: float) -> np.ndarray:
    """A 4x4 rotation about x then z (world origin fixed): an oblique acquisition."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    rx = np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1.0]])
    rz = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    return rz @ rx


def _columns(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A head and labels that depend on x and y only (z-resampling is then exact): the
    middle slice of a cubic :func:`tiny_t1w`/:func:`tiny_aseg`, repeated along z."""
    cube, middle = (*shape[:2], shape[0]), shape[0] // 2
    t1w = np.repeat(tiny_t1w(cube)[..., middle, None], shape[2], axis=2)
    labels = np.repeat(tiny_aseg(cube)[..., middle, None], shape[2], axis=2)
    return t1w, labels


def _fs(root: Path, label: str, norm: np.ndarray | None = None,
        aseg: np.ndarray | None = None, affine: np.ndarray | None = None,
        aseg_affine: np.ndarray | None = None, **kwargs: object) -> Path:
    """A raw T1w and a FreeSurfer folder whose norm/aseg are the given arrays."""
    make_raw(root, [label])
    folder = add_freesurfer(root, label, affine=affine, volumes=("orig", "norm"),
                            arrays={k: v for k, v in (("norm", norm), ("aseg", aseg))
                                    if v is not None}, **kwargs)
    if aseg_affine is not None:
        write_image(folder / "mri" / "aseg.mgz", aseg, aseg_affine)
    return folder


def build_corpus(root: Path) -> dict[str, dict]:
    """Write the dataset of broken inputs; return what each image must show.

    Returns
    -------
    dict
        bids_name -> expectation: ``fails`` (the file name its error names), ``problem``
        and ``hint`` (substrings), ``warning`` (substring of a warning), ``stage``.
    """
    expect: dict[str, dict] = {}

    def fails(label, file, problem, hint, stage):
        expect[f"sub-{label}_T1w"] = dict(fails=file, problem=problem, hint=hint, stage=stage)

    def works(label, warning=None):
        expect[f"sub-{label}_T1w"] = dict(fails=None, warning=warning)

    _fs(root, "ok")
    works("ok")

    # File-level damage of the FreeSurfer inputs the classical stage reads.
    _fs(root, "emptynorm")
    (_mri(root, "emptynorm") / "norm.mgz").write_bytes(b"")
    fails("emptynorm", "norm.mgz", "empty file (0 bytes)", "datalad get", "registration")

    _fs(root, "truncnorm")
    norm = _mri(root, "truncnorm") / "norm.mgz"
    norm.write_bytes(norm.read_bytes()[: norm.stat().st_size // 2])
    fails("truncnorm", "norm.mgz", "truncated", "again", "registration")

    _fs(root, "textaseg")
    (_mri(root, "textaseg") / "aseg.mgz").write_text("recon-all -autorecon1 exited with "
                                                     "ERRORS\n" * 40)
    fails("textaseg", "aseg.mgz", "not an MGZ file", "Replace it", "segmentation")

    _fs(root, "annexed")
    annex(_mri(root, "annexed") / "aseg.mgz")
    fails("annexed", "aseg.mgz", "broken symbolic link", "datalad get", "segmentation")

    # Voxel values.
    bad = tiny_t1w()
    bad[0, 0, :3] = [np.nan, np.inf, -np.inf]
    _fs(root, "nan", norm=bad)
    works("nan", warning="NaN or infinite voxels")

    _fs(root, "zeros", norm=np.zeros((8, 8, 8), np.float32))
    fails("zeros", "norm.mgz", "empty image", "convert or acquire", "registration")

    # Dimensions (4-D as NIfTI: MGH drops a trailing single frame).
    for label, frames, warning in (("onevol", 1, "single volume"),
                                   ("threevol", 3, "only the first volume")):
        make_raw(root, [label])
        add_fmriprep(root, [label], roles=("template", "aseg"), arrays={
            "template": np.stack([tiny_t1w(seed=i) for i in range(frames)], axis=-1)})
        works(label, warning=warning)
    _fs(root, "slice", norm=tiny_t1w((8, 8, 1)))
    fails("slice", "norm.mgz", "2-D", "3-D image", "registration")

    # Segmentations: another grid (2 mm, half the voxels per axis), foreign codes, none.
    _fs(root, "grid2mm", norm=tiny_t1w((16, 16, 16)), affine=_affine(shape=(16, 16, 16)),
        aseg=tiny_aseg(), aseg_affine=_affine((2.0, 2.0, 2.0), (8, 8, 8)))
    works("grid2mm")
    tissue = (tiny_aseg() > 0).astype(np.int32) * (1 + np.arange(512).reshape(8, 8, 8) % 3)
    _fs(root, "codes", aseg=tissue)
    fails("codes", "aseg.mgz", "not FreeSurfer's", "--seg-source", "segmentation")
    make_raw(root, ["noaseg"])  # recon-all stopped before the segmentation
    add_freesurfer(root, "noaseg", with_aseg=False, volumes=("orig", "T1"))
    works("noaseg")
    make_raw(root, ["noxfm"])  # ... or before the Talairach registration
    add_freesurfer(root, "noxfm", volumes=("orig",), talairach=None)
    expect["sub-noxfm_T1w"] = dict(fails=None, warning=None)

    # Transforms.
    _fs(root, "badxfm")
    (_mri(root, "badxfm") / "transforms" / "talairach.xfm").write_text(
        "MNI Transform File\nTransform_Type = Linear;\nLinear_Transform =\n1 0 0;\n")
    fails("badxfm", "talairach.xfm", "malformed", "recon-all", "registration")

    # fMRIPrep derivatives: the template-space T1w and desc-aseg_dseg are .nii.gz.
    make_raw(root, ["fpok", "fpempty", "fptrunc"])
    deriv = add_fmriprep(root, ["fpok", "fpempty", "fptrunc"], roles=("template", "aseg"))
    works("fpok")
    tpl = "space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz"
    (deriv / "sub-fpempty" / "anat" / f"sub-fpempty_{tpl}").write_bytes(b"")
    fails("fpempty", tpl, "empty file (0 bytes)", "datalad get", "registration")
    trunc = deriv / "sub-fptrunc" / "anat" / "sub-fptrunc_desc-aseg_dseg.nii.gz"
    raw = gzip.decompress(trunc.read_bytes())
    trunc.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    fails("fptrunc", "desc-aseg_dseg.nii.gz", "truncated", "again", "segmentation")

    # Geometry: the same head (the template at 4 mm, so that reg_cc means something)
    # stored RAS, LPS, LIA and oblique.
    head, labels = _template_head(_affine((4.0, 4.0, 4.0), GEO)), _geo_labels()
    _fs(root, "plain", norm=head, aseg=labels, affine=_affine((4.0, 4.0, 4.0), GEO))
    works("plain")
    for codes in ("LPS", "LIA"):
        h, aff = _reoriented(head, _affine((4.0, 4.0, 4.0), GEO), codes)
        lab, _ = _reoriented(labels, _affine((4.0, 4.0, 4.0), GEO), codes)
        _fs(root, codes.lower(), norm=h, aseg=lab, affine=aff)
        works(codes.lower())
    oblique = _rotation(20) @ _affine((4.0, 4.0, 4.0), GEO)
    _fs(root, "oblique", norm=_template_head(oblique), aseg=labels, affine=oblique)
    works("oblique")
    # 1x1x5 mm slabs of a head constant along z, against the same head at 1 mm. Both
    # grids end a quarter millimetre off the template's voxel centres, so that rounding
    # cannot put a template slice inside one grid and outside the other.
    col_head, col_labels = _columns((16, 16, 40))
    shift = np.eye(4)
    shift[2, 3] = 0.25
    _fs(root, "columns", norm=col_head, aseg=col_labels,
        affine=shift @ _affine(shape=(16, 16, 40)))
    works("columns")
    _fs(root, "aniso", norm=col_head[..., ::5], aseg=col_labels[..., ::5],
        affine=shift @ _affine((1.0, 1.0, 5.0), (16, 16, 8)))
    works("aniso")

    # Other things real datasets hold: a sidecar that is not JSON, .nii beside .nii.gz.
    _fs(root, "badsidecar")
    (root / "sub-badsidecar" / "anat" / "sub-badsidecar_T1w.json").write_text('{"Echo": 2,')
    works("badsidecar")
    _fs(root, "twoext")
    make_raw(root, ["twoext"], extension=".nii")
    works("twoext")
    # macOS copies leave AppleDouble "._" files beside every file; they are not images.
    for junk in (root / "sub-twoext" / "anat" / "._sub-twoext_T1w.nii.gz",
                 _mri(root, "twoext") / "._norm.mgz"):
        junk.write_bytes(b"\x00\x05\x16\x07" + bytes(4000))
    # The raw T1w not fetched (datalad) while the derivatives are: the classical stage
    # does not read it, so the image processes.
    _fs(root, "rawannexed")
    annex(root / "sub-rawannexed" / "anat" / "sub-rawannexed_T1w.nii.gz")
    works("rawannexed")
    return expect


def _geo_labels() -> np.ndarray:
    """FreeSurfer codes in 3-voxel blocks on the :data:`GEO` grid."""
    labels = np.zeros(GEO, np.int32)
    codes = np.resize(np.asarray(ASEG_CODES, np.int32), 27)
    for n, (i, j, k) in enumerate(np.ndindex(3, 3, 3)):
        labels[20 + 6 * i:23 + 6 * i, 20 + 6 * j:23 + 6 * j, 20 + 6 * k:23 + 6 * k] = codes[n]
    return labels


def _template_head(affine: np.ndarray) -> np.ndarray:
    """The registration template sampled on the :data:`GEO` grid of ``affine``."""
    tpl = nib.load(str(get_template("MNI152NLin2009cAsym").t1w))
    return resample_to_grid(np.asanyarray(tpl.dataobj, dtype=np.float32), tpl.affine, GEO,
                            affine, order=1)


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: link target, or bytes and mtime (symlinks not followed)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_file():
            st = path.stat()
            out[rel] = ("file", path.read_bytes(), st.st_mtime_ns, st.st_mode)
        else:
            out[rel] = ("dir", path.stat().st_mode)
    return out


def _set_writable(root: Path, writable: bool) -> None:
    """chmod a-w (or u+w) every file and folder, leaving symlinks (they may dangle)."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        os.chmod(path, mode | 0o200 if writable else mode & ~0o222)


def _read_tsv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {r["bids_name"]: r for r in csv.DictReader(fh, delimiter="\t")}


def _result(out: Path, name: str) -> dict:
    sub = name.split("_")[0]
    return json.loads((out / sub / "anat" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def linear(tmp_path_factory) -> str:
    """A --plugin-config running nipype in-process (fastest for tiny images)."""
    path = tmp_path_factory.mktemp("cfg") / "linear.yml"
    path.write_text("plugin: Linear\nplugin_args: {}\n")
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, linear):
    """The broken dataset, read-only, through participant and group level."""
    tmp = tmp_path_factory.mktemp("corpus")
    bids = tmp / "ds"
    expect = build_corpus(bids)
    before = _snapshot(bids)
    _set_writable(bids, False)  # stops non-root writers; root is checked by the snapshot
    out = tmp / "out"
    try:
        code = run([str(bids), str(out), "participant", "--plugin-config", linear])
        group = run([str(bids), str(out), "group"])
    finally:
        _set_writable(bids, True)
    return dict(bids=bids, out=out, expect=expect, code=code, group=group, before=before,
                after=_snapshot(bids), rows=_read_tsv(out / "group_T1w.tsv"))


def test_corpus_exit_codes_and_every_image_has_a_result(corpus, capsys):
    assert corpus["code"] == exitcodes.IMAGE_FAILED
    assert corpus["group"] == exitcodes.OK
    assert set(corpus["rows"]) == set(corpus["expect"])
    for name in corpus["expect"]:
        _result(corpus["out"], name)  # parses


def test_input_dataset_is_never_modified(corpus):
    assert corpus["after"] == corpus["before"]


@pytest.mark.parametrize("case", ["emptynorm", "truncnorm", "textaseg", "annexed", "zeros",
                                  "slice", "codes", "badxfm", "fpempty", "fptrunc"])
def test_broken_image_fails_alone_with_file_problem_hint(corpus, case):
    name = f"sub-{case}_T1w"
    want = corpus["expect"][name]
    res = _result(corpus["out"], name)
    assert res["qc_error"], res
    (err,) = [e for e in res["errors"] if e["stage"] == want["stage"]]
    assert err["file"] and err["file"].endswith(want["fails"]), err
    assert want["problem"] in err["problem"], err
    assert want["hint"] in err["hint"], err
    assert "traceback" not in err, "an expected input problem must not look like a bug"
    row = corpus["rows"][name]
    assert want["fails"].split(".")[0] in row["qc_error"]
    # The failed stage's columns are n/a; the other stage still ran.
    failed = ["reg_cc", "reg_mi"] if want["stage"] == "registration" else [
        f"vol_{s}" for s in STRUCTURE_NAMES]
    assert all(row[c] == "n/a" for c in failed), row
    other = "vol_left_hippocampus" if want["stage"] == "registration" else "reg_cc"
    assert row[other] != "n/a", row


def test_summary_lists_the_failed_images_last(corpus, linear, capsys):
    # Rerunning retries only the failed images and lists them in the last lines; an
    # image whose unneeded raw T1w is absent (annexed) is up to date, not redone forever;
    # a result file that is not a bids_qc JSON (damaged by hand) is recomputed.
    (corpus["out"] / "sub-fpok" / "anat" / "sub-fpok_T1w.json").write_text("[]")
    code = run([str(corpus["bids"]), str(corpus["out"]), "participant", "--plugin-config",
                linear, "--participant-label", "ok", "zeros", "rawannexed", "fpok"])
    assert code == exitcodes.IMAGE_FAILED
    err = capsys.readouterr().err
    summary = err[err.rindex("bids_qc: 4 image(s) selected"):].splitlines()
    assert "2 processed, 2 up to date, 1 failed" in summary[0]
    assert summary[1].startswith("  FAILED sub-zeros_T1w: registration: norm.mgz empty image")
    assert "1 image(s) failed" in summary[-1]


@pytest.mark.parametrize("case", ["ok", "nan", "onevol", "threevol", "grid2mm", "noaseg",
                                  "fpok", "plain", "lps", "lia", "oblique", "columns",
                                  "aniso", "badsidecar", "twoext", "rawannexed"])
def test_usable_image_processes(corpus, case):
    name = f"sub-{case}_T1w"
    res = _result(corpus["out"], name)
    assert res["qc_error"] == "" and res["errors"] == [], res["errors"]
    warning = corpus["expect"][name]["warning"]
    if warning:
        assert any(warning in w for w in res["warnings"]), res["warnings"]
    row = corpus["rows"][name]
    assert row["qc_error"] == "n/a" or row["qc_error"] == ""
    assert np.isfinite(float(row["reg_cc"])) and np.isfinite(float(row["reg_mi"]))


@pytest.mark.parametrize("case,stage,column,missing", [
    ("noaseg", "segmentation", "vol_left_hippocampus", "aseg.mgz"),
    ("noxfm", "registration", "reg_cc", "talairach.xfm")])
def test_recon_stopped_early_skips_the_stage_with_reason(corpus, case, stage, column, missing):
    res = _result(corpus["out"], f"sub-{case}_T1w")
    assert res["qc_error"] == "" and res["errors"] == []
    assert any(s.get("stage") == stage and missing in s["reason"] for s in res["skipped"])
    assert corpus["rows"][f"sub-{case}_T1w"][column] == "n/a"


def test_segmentation_on_its_own_grid(corpus):
    # A 2 mm aseg beside a 1 mm norm: volumes are voxel counts x 8 mm^3.
    res = _result(corpus["out"], "sub-grid2mm_T1w")
    labels = tiny_aseg()
    assert res["metrics"]["vol_left_hippocampus"] == 8.0 * np.count_nonzero(labels == 17)
    assert res["metrics"]["vol_right_thalamus"] == 8.0 * np.count_nonzero(labels == 49)


@pytest.mark.parametrize("case,reference", [("lps", "plain"), ("lia", "plain"),
                                            ("oblique", "plain"), ("aniso", "columns")])
def test_orientation_and_voxel_size_do_not_change_values(corpus, case, reference):
    got = _result(corpus["out"], f"sub-{case}_T1w")["metrics"]
    ref = _result(corpus["out"], f"sub-{reference}_T1w")["metrics"]
    for s in STRUCTURE_NAMES:
        assert got[f"vol_{s}"] == pytest.approx(ref[f"vol_{s}"], rel=0.01), s
    assert sum(ref[f"vol_{s}"] for s in STRUCTURE_NAMES) > 0
    assert got["reg_cc"] == pytest.approx(ref["reg_cc"], rel=0.01)
    assert got["reg_mi"] == pytest.approx(ref["reg_mi"], rel=0.02)
    if reference == "plain":
        assert ref["reg_cc"] > 0.8  # a real registration check, not noise


def test_large_image_declares_its_memory_from_the_header(tmp_path):
    # A 0.5 mm whole head (512^3) is sized from its header alone: nothing is read.
    path = tmp_path / "norm.nii"
    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 512))
    header.set_data_dtype(np.float32)
    header.set_zooms((0.5, 0.5, 0.5))
    with open(path, "wb") as fh:
        header.write_to(fh)
    row = QCInput(bids_name="sub-big_T1w", entities={"subject": "big"}, t1w_preproc=path)
    small = QCInput(bids_name="sub-s_T1w", entities={"subject": "s"},
                    t1w_preproc=write_image(tmp_path / "s.nii.gz"))
    assert estimate_mem_gb(row) > 4 * estimate_mem_gb(small)
    assert estimate_mem_gb(row) < 8.0  # fits a node of the 6 GB class


# --- dataset-level problems: BIDS-Apps exit codes, nothing processed --------------------

def test_missing_or_invalid_dataset_description_is_16(tmp_path, capsys):
    bids = make_raw(tmp_path / "ds", ["01"])
    desc = bids / "dataset_description.json"
    desc.write_text('{"Name": "x", ')
    assert run([str(bids), str(tmp_path / "o"), "participant"]) == exitcodes.INVALID_BIDS
    assert "not valid JSON" in capsys.readouterr().err
    annex(desc)
    assert run([str(bids), str(tmp_path / "o"), "participant"]) == exitcodes.INVALID_BIDS
    assert "datalad get" in capsys.readouterr().err
    desc.unlink()
    assert run([str(bids), str(tmp_path / "o"), "participant"]) == exitcodes.INVALID_BIDS
    assert "is missing" in capsys.readouterr().err
    assert not (tmp_path / "o" / "sub-01").exists()


def test_unknown_participant_is_18_and_lists_the_labels(tmp_path, capsys):
    bids = make_raw(tmp_path / "ds", ["01", "02"])
    code = run([str(bids), str(tmp_path / "o"), "participant", "--participant-label", "03"])
    assert code == exitcodes.NOTHING_SELECTED
    err = capsys.readouterr().err
    assert "03" in err and "01, 02" in err


def test_unwritable_output_is_73(tmp_path):
    bids = make_raw(tmp_path / "ds", ["01"])
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where OUTPUT_DIR's parent should be")
    assert run([str(bids), str(blocker / "out"), "participant"]) == exitcodes.CANT_CREATE
    if os.geteuid() != 0:  # permissions stop only non-root users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert run([str(bids), str(locked), "participant"]) == exitcodes.CANT_CREATE
        locked.chmod(0o755)


# --- determinism ------------------------------------------------------------------------

def _outputs(out: Path) -> dict[str, bytes]:
    """Participant JSONs without their run-variable provenance (timestamp, stage seconds),
    and the group TSV, as bytes."""
    files = {}
    for path in sorted(out.glob("sub-*/anat/*.json")):
        data = json.loads(path.read_text())
        for key in RUN_VARIABLE_KEYS:
            del data["provenance"][key]
        files[str(path.relative_to(out))] = json.dumps(data, indent=2).encode()
    files["group_T1w.tsv"] = (out / "group_T1w.tsv").read_bytes()
    return files


def test_outputs_are_deterministic(tmp_path, linear):
    bids = tmp_path / "ds"
    _fs(bids, "01")
    _fs(bids, "02", norm=np.stack([tiny_t1w(seed=2)] * 2, axis=-1))  # a warning
    _fs(bids, "03")
    (_mri(bids, "03") / "aseg.mgz").write_bytes(b"")  # an error record
    runs = []
    for out, extra in ((tmp_path / "a", []), (tmp_path / "a", ["--force"]),
                       (tmp_path / "b", [])):
        code = run([str(bids), str(out), "participant", "--plugin-config", linear, *extra])
        assert code == exitcodes.IMAGE_FAILED
        assert run([str(bids), str(out), "group"]) == exitcodes.OK
        runs.append(_outputs(out))
    assert len(runs[0]) == 4
    assert runs[0] == runs[1] == runs[2]
    # The written JSON itself differs only in the timestamp and the stage seconds.
    shutil.rmtree(tmp_path / "b" / "logs")
    a, b = (json.loads((tmp_path / x / "sub-01" / "anat" / "sub-01_T1w.json").read_text())
            for x in "ab")  # fmt: skip
    assert a["provenance"]["stage_seconds"]["classic"] > 0
    for data in (a, b):
        for key in RUN_VARIABLE_KEYS:
            data["provenance"].pop(key)
    assert a == b


def test_affine_helpers_keep_the_world():
    # Guards the geometry cases: a reoriented copy maps every voxel to the same point.
    head = tiny_t1w((16, 16, 16))
    data, aff = _reoriented(head, _affine(shape=(16, 16, 16)), "LIA")
    assert nib.aff2axcodes(aff) == ("L", "I", "A")
    world = _affine(shape=(16, 16, 16)) @ np.array([3, 5, 7, 1.0])
    back = np.linalg.solve(aff, world)
    assert data[tuple(np.rint(back[:3]).astype(int))] == head[3, 5, 7]
