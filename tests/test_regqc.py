"""RegQC: network shapes, shipped weights, accuracy on evaluation anatomies, the nipype node."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bids_qc.models import regqc
from bids_qc.models.registry import get_spec, sha256sum
from bids_qc.spatial import TemplateGrid, load_template
from bids_qc.templates_data import get_template

from .conftest import shared_path

CARD = Path(regqc.__file__).parent / "cards" / "regqc.md"
#: MAE bound on the evaluation cases (mm), the issue's. The shipped 1.1.0 weights (102 min of
#: 2-core CPU training) reach about 4.0 mm here, where predicting the mean gives about 9 mm.
MAE_BOUND_MM = 5.0


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(2)


@lru_cache(maxsize=1)
def _grid() -> TemplateGrid:
    return load_template(get_template("MNI152NLin2009cAsym"))


def test_random_network_shapes_and_bad_input():
    torch.manual_seed(0)
    net = regqc.RegQCNet().eval()
    shape, _ = regqc.model_grid(_grid())
    x = torch.randn(3, 2, *shape)
    out = regqc.predict(x, model=net)
    assert out.shape == (3,) and out.dtype == np.float64 and np.isfinite(out).all()
    with pytest.raises(ValueError, match="shape"):
        net(torch.zeros(1, 3, 8, 8, 8))
    # The output calibration (intercept mm, slope) acts on the regression's output.
    with torch.inference_mode():
        raw = net(x)
        net.calibration.copy_(torch.tensor([2.0, 1.5]))
        assert torch.allclose(net(x), 2.0 + 1.5 * raw, atol=1e-4)


def test_preprocess_shape_and_errors():
    grid = _grid()
    x = regqc.preprocess(grid.data, grid)
    assert x.shape == (2, *regqc.model_grid(grid)[0]) and x.dtype == torch.float32
    # The template against itself: both channels agree.
    assert torch.allclose(x[0], x[1], atol=1e-4)
    with pytest.raises(ValueError, match="3-D"):
        regqc.preprocess(np.zeros((4, 4)), grid)
    with pytest.raises(ValueError, match="affine"):
        regqc.preprocess(np.zeros((10, 10, 10), np.float32), grid)


def test_shipped_weights_match_registry_and_card():
    spec = get_spec("regqc")
    assert spec.is_installed() and spec.needs == ("template_t1w",)
    assert sha256sum(spec.weights_path()) == spec.sha256
    assert spec.weights_path().stat().st_size < 8 * 1024**2
    stamp = re.search(r"sha256 `([0-9a-f]{64})`", CARD.read_text())
    assert stamp is not None and stamp.group(1) == spec.sha256
    assert isinstance(regqc.load_model("cpu"), regqc.RegQCNet)


@lru_cache(maxsize=4)
def _eval_anatomy(index: int, resolution: float) -> tuple:
    """Evaluation map ``index`` synthesised (fixed seed) and resampled to the template."""
    from bids_qc.synth.labelmaps import load_label_map
    from bids_qc.synth.synthesize import synthesize
    from bids_qc.synth.template import label_map_to_template

    shared_path("synthseg_label_maps", f"training_seg_{index:02d}.nii.gz")
    lm = load_label_map(index, "eval")
    case = synthesize(lm.labels, lm.affine, 700 + index, "t1", resolution=resolution,
                      deform=False, skull_strip=True, split="eval")  # fmt: skip
    return case.image, case.affine, label_map_to_template(index)


def test_accuracy_on_evaluation_cases():
    from bids_qc.synth.metrics import affine_rmse
    from bids_qc.synth.misregistration import sample_affine
    from bids_qc.synth.template import to_template
    from bids_qc.training.regqc import coarse_grid

    grid = _grid()
    rng = np.random.default_rng(1234)
    s_shape, s_affine = coarse_grid(grid, 16.0)
    xs, truth = [], []
    for index in (17, 18):
        image, affine, to_mni = _eval_anatomy(index, 2.0)
        for _ in range(15):
            A = sample_affine(rng, float(rng.uniform(0, 40)), s_shape, s_affine)
            vol, t_affine = to_template(image, affine, to_mni, resolution=2.0,
                                        misregistration=A)  # fmt: skip
            xs.append(regqc.preprocess(vol, grid, affine=t_affine))
            truth.append(affine_rmse(A, grid.data.shape, grid.affine))
    truth_a = np.array(truth)
    pred = regqc.predict(torch.stack(xs))
    mae = float(np.mean(np.abs(pred - truth_a)))
    constant = float(np.mean(np.abs(truth_a - truth_a.mean())))
    assert len(truth) >= 30
    assert mae < MAE_BOUND_MM, (mae, constant)
    assert mae < 0.6 * constant, (mae, constant)  # beats the mean by a wide margin


def test_resolution_agreement():
    """One subject given at 0.8, 1.0 and 1.4 mm: predictions within 1 mm."""
    from bids_qc.synth.misregistration import sample_affine
    from bids_qc.synth.template import to_template
    from bids_qc.training.regqc import coarse_grid

    grid = _grid()
    s_shape, s_affine = coarse_grid(grid, 16.0)
    A = sample_affine(np.random.default_rng(7), 8.0, s_shape, s_affine)
    preds = []
    for res in (0.8, 1.0, 1.4):
        image, affine, to_mni = _eval_anatomy(19, res)
        vol, t_affine = to_template(image, affine, to_mni, resolution=1.0, misregistration=A)
        preds.append(float(regqc.predict([vol], template=grid)[0]))
    assert max(preds) - min(preds) <= 1.0, preds


def _classic(path: str | None) -> dict:
    template = {"space": "MNI152NLin2009cAsym"} if path else {}
    return {"stage": "classic", "metrics": {}, "errors": [], "warnings": [], "skipped": [],
            "provenance": {"template": template, "template_space_t1w": path}}


def test_interface_result_and_errors(tmp_path):
    from bids_qc.interfaces.regqc import RegQC
    from bids_qc.workflows.base import MODEL_INTERFACES

    assert MODEL_INTERFACES["regqc"] is RegQC
    grid = _grid()
    path = tmp_path / "tpl_T1w.nii.gz"
    small = grid.data[::2, ::2, ::2]
    affine = grid.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(small.astype(np.float32), affine), str(path))

    def run(classic: dict) -> dict:
        node = RegQC(qc_input={"bids_name": "sub-01_T1w"}, classic_result=classic,
                     device="cpu", thresholds={"regqc_rmse_mm": 5.0})  # fmt: skip
        return node.run(cwd=str(tmp_path)).outputs.result

    res = run(_classic(str(path)))
    assert res["stage"] == "regqc" and not res["errors"]
    assert isinstance(res["metrics"]["regqc_rmse_mm"], float)
    assert res["metrics"]["regqc_flag"] in (0, 1)
    assert res["provenance"]["sha256"] == get_spec("regqc").sha256
    assert res["provenance"]["threshold_mm"] == 5.0

    missing = run(_classic(str(tmp_path / "absent.nii.gz")))
    assert missing["errors"] and missing["metrics"]["regqc_rmse_mm"] is None
    failed = run(_classic(None))
    assert failed["skipped"] and not failed["errors"]
