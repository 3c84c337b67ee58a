"""A raw-only dataset (T1w images, no derivatives) gets the whole QC: VINN segments it,
bids_qc registers it to the template, and the volumes, the registration checks and the
models' verdicts are written.

VINN is forced on through a temporary registry in which it passes its gate, so the test
does not depend on the shipped gate record; the QC models are named (``--models``), so
they run whatever their gates say.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from bids_qc.cli import run
from bids_qc.demo import SUBJECTS, _rigid, build_dataset
from bids_qc.models.registry import REGISTRY
from bids_qc.synth.metrics import affine_rmse
from bids_qc.templates_data import DEFAULT_SPACE, get_template
from bids_qc.transforms import read_itk_affine

SEED = 11


@pytest.fixture(scope="module")
def raw_run(tmp_path_factory):
    """The demo's first subject (2 mm, a random head pose) without its derivatives, run
    with default options but ``--models regqc segqc`` and VINN passing its gate."""
    root = tmp_path_factory.mktemp("raw")
    bids, _ = build_dataset(root, SUBJECTS[:1], seed=SEED, zoom=2.0)
    shutil.rmtree(bids / "derivatives")
    out = root / "out"
    config = root / "linear.yml"
    config.write_text("plugin: Linear\nplugin_args: {}\n")
    forced = tuple(dataclasses.replace(s, experimental=False) if s.name == "vinn" else s
                   for s in REGISTRY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("bids_qc.workflows.base.REGISTRY", forced)
        code = run([str(bids), str(out), "participant", "--plugin-config", str(config),
                    "--models", "regqc", "segqc", "-w", str(root / "work")])
    assert code == 0
    assert run([str(bids), str(out), "group"]) == 0
    result = json.loads((out / "sub-01" / "anat" / "sub-01_T1w.json").read_text())
    return bids, out, result


def test_deleted_segmentation_and_transform_come_back_with_a_kept_work_directory(raw_run):
    """VINN's dseg and the registration's xfm are published by the always-run sink, so a
    rerun with the same kept ``-w`` writes them again although nipype reuses both nodes'
    cached results (written straight into OUTPUT_DIR by those nodes, they stayed lost)."""
    bids, out, first = raw_run
    anat = out / "sub-01" / "anat"
    files = [anat / "sub-01_desc-vinn_dseg.nii.gz",
             anat / f"sub-01_from-T1w_to-{DEFAULT_SPACE}_mode-image_xfm.txt"]
    before = [f.read_bytes() for f in files]
    for f in files:
        f.unlink()
    (anat / "sub-01_T1w.json").unlink()
    forced = tuple(dataclasses.replace(s, experimental=False) if s.name == "vinn" else s
                   for s in REGISTRY)
    root = out.parent
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("bids_qc.workflows.base.REGISTRY", forced)
        assert run([str(bids), str(out), "participant", "--plugin-config",
                    str(root / "linear.yml"), "--models", "regqc", "segqc",
                    "-w", str(root / "work")]) == 0
    assert [f.read_bytes() for f in files] == before
    again = json.loads((anat / "sub-01_T1w.json").read_text())
    assert again["metrics"] == first["metrics"]
    # the JSON names the published files, never the work directory's
    assert str(root / "work") not in json.dumps(again)
    assert again["provenance"]["stages"]["vinn"]["segmentation"] == str(files[0])


def test_raw_only_image_is_segmented_registered_and_checked(raw_run):
    _, out, res = raw_run
    assert not res["qc_error"], res["errors"]
    assert res["seg_source"] == "bids_qc" and res["reg_source"] == "bids_qc"
    metrics = res["metrics"]
    # volumes of VINN's segmentation
    assert metrics["vol_left_thalamus"] > 0 and metrics["vol_whole_brain"] > 0
    # the template-space checks on bids_qc's own registration, and the models' verdicts
    assert metrics["reg_cc"] is not None and metrics["reg_cc_flag"] in (0, 1)
    assert metrics["regqc_rmse_mm"] is not None and metrics["regqc_flag"] in (0, 1)
    assert metrics["segqc_dice_mean"] is not None and metrics["segqc_flag"] in (0, 1)
    assert metrics["reg_cc"] > 0.5  # a good registration correlates with the template
    stages = res["provenance"]["stages"]
    assert stages["register"]["brain_mask_from"].endswith("sub-01_desc-vinn_dseg.nii.gz")
    assert stages["classic"]["template"]["how"] == "itk"


def test_the_transform_is_a_bids_derivative_that_recovers_the_pose(raw_run):
    bids, out, res = raw_run
    anat = out / "sub-01" / "anat"
    xfm = anat / f"sub-01_from-T1w_to-{DEFAULT_SPACE}_mode-image_xfm.txt"
    assert xfm.is_file() and (anat / "sub-01_desc-vinn_dseg.nii.gz").is_file()
    assert res["provenance"]["stages"]["register"]["transform"] == str(xfm)
    # The demo placed the head at pose @ template world (its first random draw), so the
    # T1w -> template map read back from the file undoes the pose.
    pose = _rigid(np.random.default_rng([SEED, 0]))
    tpl = nib.load(str(get_template(DEFAULT_SPACE).t1w))
    assert affine_rmse(read_itk_affine(xfm) @ pose, tpl.shape, tpl.affine) < 3.0
    assert not list(bids.rglob("*xfm*"))  # nothing written into the BIDS dataset


def test_report_and_group_table_say_the_registration_is_bids_qcs_own(raw_run):
    _, out, _ = raw_run
    html = (out / "sub-01_T1w.html").read_text()
    assert "own affine registration of the T1w" in html
    assert "This segmentation is bids_qc&#39;s own (VINN" in html or \
        "This segmentation is bids_qc's own (VINN" in html
    assert "no registration input" not in html
    assert 'alt="Template-space T1w, template edges overlaid"' in html  # the mosaic
    with open(out / "group_T1w.tsv", newline="") as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    assert (row["reg_source"], row["seg_source"]) == ("bids_qc", "bids_qc")
    assert row["regqc_rmse_mm"] != "n/a" and row["vol_left_hippocampus"] != "n/a"
