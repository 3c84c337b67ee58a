"""End to end: participant then group level on generated and real datasets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_qc.cli import run
from bids_qc.demo import SUBJECTS, build_dataset, demo_models
from bids_qc.reports.checks import evaluate
from bids_qc.schema import column_names
from bids_qc.structures import STRUCTURE_NAMES
from tests.conftest import shared_path


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo dataset (2 mm for speed) through participant (MultiProc) and group level."""
    root = tmp_path_factory.mktemp("demo")
    bids, truth = build_dataset(root, seed=3, zoom=2.0)
    out = bids / "derivatives" / "bids_qc"
    assert run([str(bids), str(out), "participant", "--nprocs", "2",
                "--models", *demo_models()]) == 0
    assert run([str(bids), str(out), "group"]) == 0
    return bids, out, {t["bids_name"]: t for t in truth}


def _result(out: Path, name: str) -> dict:
    return json.loads((out / name.split("_")[0] / "anat" / f"{name}.json").read_text())


def test_demo_verdicts_catch_the_planted_failures(demo_run):
    """The 25 mm misregistration fails a registration check that is on by default; the
    erosion is flagged (an experimental verdict counts: the report marks it so); no check
    that is on by default fails the good image."""
    _, out, truth = demo_run
    by_sub = {name.split("_")[0]: name for name in truth}
    fired = {sub: [o for o in evaluate(_result(out, name)) if o.flag == 1]
             for sub, name in by_sub.items()}
    assert truth[by_sub["sub-02"]]["true_rmse_mm"] >= 20
    assert any(o.spec.flag in ("reg_cc_flag", "reg_mi_flag") for o in fired["sub-02"]), \
        fired["sub-02"]
    assert fired["sub-04"], "the erosion passed every check"
    assert not [o.spec.flag for o in fired["sub-01"] if not o.spec.experimental]
    html = (out / f"{by_sub['sub-04']}.html").read_text()
    if any(o.spec.experimental for o in fired["sub-04"]):
        assert "experimental" in html.lower()


def test_demo_outputs_files_and_keys(demo_run):
    bids, out, truth = demo_run
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == (
        "derivative"
    )
    for name in truth:
        sub = name.split("_")[0]
        res = json.loads((out / sub / "anat" / f"{name}.json").read_text())
        assert set(res) >= {"bids_name", "entities", "reg_source", "seg_source", "qc_error",
                            "metrics", "errors", "warnings", "skipped", "provenance"}
        prov = res["provenance"]
        assert set(prov) >= {"bids_qc_version", "timestamp", "device", "fingerprint", "inputs"}
        assert all(len(md5) == 32 for md5 in prov["fingerprint"]["inputs"].values())
        assert prov["stages"]["classic"]["template"]["sha256"]
        assert (out / f"{name}.html").is_file()
    rows = _read_tsv(out / "group_T1w.tsv")
    assert list(rows[0]) == column_names()
    assert [r["bids_name"] for r in rows] == sorted(truth)
    assert (out / "group_T1w.html").is_file()


def test_demo_values_match_what_was_planted(demo_run):
    _, out, truth = demo_run
    rows = {r["bids_name"]: r for r in _read_tsv(out / "group_T1w.tsv")}
    for name, planted in truth.items():
        row = rows[name]
        assert row["qc_error"] == ""
        assert row["reg_source"] == planted["derivative"]
        assert row["seg_source"] == planted["derivative"]
        for s in STRUCTURE_NAMES:
            assert float(row[f"vol_{s}"]) == pytest.approx(planted[f"seg_vol_{s}"], rel=1e-6), (
                name, s)
    # Registration baselines order the planted misregistrations.
    good = [float(rows[n]["reg_cc"]) for n, t in truth.items() if t["true_rmse_mm"] == 0]
    bad = [float(rows[n]["reg_cc"]) for n, t in truth.items() if t["true_rmse_mm"] >= 20]
    assert min(good) > max(bad)
    # A structure the damage removed has zero volume.
    missing = [n for n, t in truth.items() if t["damage"] == "missing"]
    for name in missing:
        gone = [s for s in STRUCTURE_NAMES if truth[name][f"true_dice_{s}"] == 0.0]
        assert gone and all(float(rows[name][f"vol_{s}"]) == 0.0 for s in gone)


def test_demo_subjects_cover_both_derivatives():
    assert {s.derivative for s in SUBJECTS} == {"fmriprep", "freesurfer"}


@pytest.mark.realdata
def test_real_ds002748_raw_only(tmp_path):
    ds = shared_path("ds002748")
    out = tmp_path / "out"
    # --segment never: VINN's end to end run is tested (on a small image) in test_vinn.py.
    code = run([str(ds), str(out), "participant", "--participant-label", "01", "02",
                "--nprocs", "2", "--segment", "never"])
    assert code == 0
    assert run([str(ds), str(out), "group"]) == 0
    rows = _read_tsv(out / "group_T1w.tsv")
    assert [r["bids_name"] for r in rows] == ["sub-01_T1w", "sub-02_T1w"]
    res = json.loads((out / "sub-01" / "anat" / "sub-01_T1w.json").read_text())
    stages = {s.get("stage") for s in res["skipped"]}
    assert {"registration", "segmentation"} <= stages  # raw only: said why, not crashed


@pytest.mark.realdata
def test_real_freesurfer_bert(tmp_path):
    mri = shared_path("freesurfer_bert", "mri")
    stats = shared_path("freesurfer_bert", "stats", "aseg.stats")
    bids = tmp_path / "bert"
    (bids / "sub-bert" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "bert", "BIDSVersion": "1.9.0"}')
    norm = nib.load(str(mri / "norm.mgz"))
    nib.save(nib.Nifti1Image(np.asanyarray(norm.dataobj).astype(np.float32), norm.affine),
             str(bids / "sub-bert" / "anat" / "sub-bert_T1w.nii.gz"))
    fs = bids / "derivatives" / "freesurfer" / "sub-bert"
    fs.mkdir(parents=True)
    (fs / "mri").symlink_to(mri)
    out = tmp_path / "out"
    assert run([str(bids), str(out), "participant", "--nprocs", "1"]) == 0
    res = json.loads((out / "sub-bert" / "anat" / "sub-bert_T1w.json").read_text())
    assert res["reg_source"] == "freesurfer" and res["seg_source"] == "freesurfer"
    # FreeSurfer's own voxel counts (aseg.stats NVoxels, 1 mm voxels) are our volumes.
    counts = {}
    for line in stats.read_text().splitlines():
        if not line.startswith("#"):
            parts = line.split()
            counts[parts[4]] = float(parts[2])
    assert res["metrics"]["vol_left_hippocampus"] == counts["Left-Hippocampus"]
    assert res["metrics"]["vol_right_thalamus"] == counts["Right-Thalamus"]
    assert 0.3 < res["metrics"]["reg_cc"] < 1.0


#: The demo's group table as the last commit that changed outputs on purpose wrote it.
GOLDEN = Path(__file__).resolve().parent / "golden" / "demo_seed3_2mm_group_T1w.tsv"


def _same_cell(column: str, got: str, want: str) -> bool:
    """Equal, or for numbers within what another CPU's float kernels may change."""
    if got == want:
        return True
    try:
        a, b = float(got), float(want)
    except ValueError:
        return False
    return abs(a - b) <= 1e-4 + 1e-3 * abs(b)


def test_demo_outputs_equal_the_golden_table(demo_run):
    """Refactoring keeps the demo's outputs: every cell of its group table (every metric,
    flag and source of every image) equals the committed one. A commit that changes the
    outputs on purpose (new weights, a new metric) regenerates it and says so:
    ``BIDS_QC_UPDATE_GOLDEN=1 pytest tests/test_integration.py -k golden``."""
    import os

    _, out, _ = demo_run
    table = (out / "group_T1w.tsv").read_text()
    if os.environ.get("BIDS_QC_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(table)
    rows = {r["bids_name"]: r for r in _read_tsv(out / "group_T1w.tsv")}
    golden = {r["bids_name"]: r for r in _read_tsv(GOLDEN)}
    assert list(rows) == list(golden)
    assert list(next(iter(rows.values()))) == list(next(iter(golden.values())))
    changed = [(name, c, rows[name][c], want) for name, row in golden.items()
               for c, want in row.items() if not _same_cell(c, rows[name][c], want)]
    assert not changed, changed[:10]


def test_bids_validator_accepts_the_demo_output(demo_run):
    """The demo's whole output (six images, both derivative kinds, ManifoldQC surrogates,
    ShapeQC figures, the group level) is a BIDS-Derivatives dataset the validator accepts:
    no error, only the warnings a derivative cannot avoid (#24 step 5)."""
    import os
    import subprocess

    from tests.test_bids_validator import EXPECTED_WARNINGS, _validator

    validator = _validator()
    _, out, _ = demo_run
    done = subprocess.run([*validator, str(out), "--json"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NO_COLOR": "1"})
    found = json.loads(done.stdout)["issues"]
    assert found["errors"] == [], found["errors"]
    assert {w["key"] for w in found["warnings"]} <= EXPECTED_WARNINGS, found["warnings"]
    assert list(out.glob("sub-*/anat/*_desc-manifoldqc_dseg.nii.gz"))  # images were checked
