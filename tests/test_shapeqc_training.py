"""ShapeQC's training loop and the shared-versus-per-structure comparison's scoring, on
small synthetic maps (no shared data needed)."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pytest
import torch

from bids_qc.calibrate import roc_auc
from bids_qc.models.shapeqc import N_CHANNELS, SCALARS, ShapeQCNet
from bids_qc.structures import SUBCORTICAL_NAMES
from bids_qc.training.shapeqc import fit, scores
from bids_qc.training.shapeqc_card import _compare_section
from bids_qc.training.shapeqc_compare import per_structure, summarise


@pytest.fixture(autouse=True, scope="module")
def _threads():
    torch.set_num_threads(1)


def _toy_split(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Maps whose FAIL shapes carry a bright blob near the equator (a learnable cue)."""
    rng = np.random.default_rng(seed)
    fail = rng.random(n) < 0.3
    maps = rng.normal(0, 1, (n, N_CHANNELS, 128, 128)).astype(np.float32)
    maps[fail, :, 48:80, 40:90] += 3.0
    data = {
        "structure": np.array([SUBCORTICAL_NAMES[i % 4] for i in range(n)]),
        "fail": fail,
        "scalars": np.zeros((n, len(SCALARS)), np.float32),
    }
    return maps.astype(np.float16), data


def _args(steps: int, **extra: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"steps": steps, "start_step": 0, "seed": 3, "lr": 3e-3,
                                 "batch": 16, "threads": 1, "checkpoint_minutes": 3.0,
                                 "pause_after_minutes": None, **extra})  # fmt: skip


def test_fit_learns_a_cue(tmp_path):
    x_tr, tr = _toy_split(96, 0)
    x_ev, ev = _toy_split(48, 1)
    torch.manual_seed(0)
    net = ShapeQCNet(width=4)
    before = roc_auc(scores(net, x_ev, ev["structure"], ev["scalars"]), ev["fail"])
    record = fit(net, x_tr, tr, np.arange(len(tr["fail"])), _args(30), tmp_path, lambda m: None,
                 (x_ev, ev))  # fmt: skip
    assert record is not None and (tmp_path / "shapeqc.pt").is_file()
    assert record["samples"] == 30 * 16 and record["warm_start"] == "scratch"
    after = roc_auc(scores(net, x_ev, ev["structure"], ev["scalars"]), ev["fail"])
    assert after == pytest.approx(record["eval_auc"])
    assert after > 0.9 and after > before, (before, after)


def test_a_paused_and_resumed_sitting_equals_an_uninterrupted_one(tmp_path):
    """The recipe's own step (batch draw, warps, BatchNorm) resumes bitwise (1 thread, fp32)."""
    x_tr, tr = _toy_split(48, 4)
    subset = np.arange(len(tr["fail"]))

    def sitting(out, pause):
        torch.manual_seed(0)
        net = ShapeQCNet(width=4)
        return fit(net, x_tr, tr, subset, _args(4, batch=8, pause_after_minutes=pause), out,
                   lambda m: None), net  # fmt: skip

    whole, net = sitting(tmp_path / "whole", None)
    pauses, record = 0, None
    while record is None:
        record, resumed = sitting(tmp_path / "paused", 0.0)
        pauses += record is None
        assert pauses < 8
    assert pauses >= 1
    for (k, a), b in zip(net.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert record["weights_sha256"] == whole["weights_sha256"]


def test_fit_uses_only_its_subset(tmp_path):
    x_tr, tr = _toy_split(160, 2)
    # Labels outside the subset are inverted: training on them would unlearn the cue.
    subset = np.flatnonzero(tr["structure"] == SUBCORTICAL_NAMES[0])
    others = np.setdiff1d(np.arange(len(tr["fail"])), subset)
    tr = {**tr, "fail": tr["fail"].copy()}
    tr["fail"][others] = ~tr["fail"][others]
    torch.manual_seed(0)
    net = ShapeQCNet(width=4)
    fit(net, x_tr, tr, subset, _args(20), tmp_path, lambda m: None)
    x_ev, ev = _toy_split(96, 3)
    own = ev["structure"] == SUBCORTICAL_NAMES[0]
    p = scores(net, x_ev[own], ev["structure"][own], ev["scalars"][own])
    assert roc_auc(p, ev["fail"][own]) > 0.8
    with pytest.raises(ValueError, match="FAIL and PASS"):
        fit(net, x_tr, tr, subset[~tr["fail"][subset]], _args(2), tmp_path / "b",
            lambda m: None)  # fmt: skip


def test_per_structure_scores_and_summary():
    structures = np.repeat(np.array(SUBCORTICAL_NAMES[:2]), 10)
    fail = np.tile(np.r_[np.ones(3, bool), np.zeros(7, bool)], 2)
    # First structure separated perfectly; second inverted.
    p = np.where(fail, 0.9, 0.1)
    p[10:] = 1 - p[10:]
    rows = per_structure(p, {"structure": structures, "fail": fail}, {s: 0.5 for s in
                                                                      SUBCORTICAL_NAMES})
    a, b = rows[SUBCORTICAL_NAMES[0]], rows[SUBCORTICAL_NAMES[1]]
    assert (a["auc"], a["f_recall"], a["f_share"]) == (1.0, 1.0, 0.3)
    assert (b["auc"], b["f_recall"], b["f_share"]) == (0.0, 0.0, 0.7)
    assert rows[SUBCORTICAL_NAMES[2]] == {"n": 0, "n_fail": 0}
    summary = summarise(rows)
    assert summary["mean_auc"] == 0.5 and summary["auc_ge_0.9"] == 1
    assert summary["recall_ge_0.8_share_le_0.3"] == 1


def test_compare_section_renders_every_structure():
    row = {"n": 10, "n_fail": 3, "auc": 0.8, "f_recall": 0.67, "f_share": 0.3}
    side = {"eval": {s: row for s in SUBCORTICAL_NAMES}, "test": {s: row for s in
                                                                  SUBCORTICAL_NAMES}}
    side["eval_summary"] = side["test_summary"] = summarise(side["test"])
    text = "\n".join(_compare_section({"shared": side, "per_structure": side}))
    assert all(f"| {s} | 0.800 / 0.800" in text for s in SUBCORTICAL_NAMES)
    assert "not compared" in "\n".join(_compare_section(None))


def test_the_recipe_warm_starts_from_the_shipped_network(tmp_path, monkeypatch):
    """One sitting of the recipe (its shapes replaced by toy maps): the shipped network goes
    on learning with its own templates, and weights, thresholds and summary are written."""
    import json

    from bids_qc.models.registry import get_spec, load_state_dict
    from bids_qc.training import shapeqc as recipe

    x_tr, tr = _toy_split(64, 5)
    x_ev, ev = _toy_split(64, 6)
    seen = {}

    def prepare(args, log, templates=None):
        seen["templates"] = templates
        return tr, ev, templates, x_tr, x_ev

    monkeypatch.setattr(recipe, "prepare", prepare)
    out = tmp_path / "out"
    recipe.main(["--cache", str(tmp_path / "cache"), "--out", str(out), "--steps", "3",
                 "--batch", "8"])  # fmt: skip
    shipped = load_state_dict(get_spec("shapeqc"))
    assert set(seen["templates"]) == set(recipe.SUBCORTICAL_KINDS)
    summary = json.loads((out / "shapeqc_train.json").read_text())
    assert summary["steps"] == 3 and summary["warm_start"].startswith("shipped shapeqc.pt")
    assert summary["width"] == int(shipped["stem.0.weight"].shape[0])
    weights = torch.load(out / "shapeqc.pt", weights_only=True)
    assert torch.equal(weights["template_log_density"], shipped["template_log_density"])
    assert not torch.equal(weights["head.weight"], shipped["head.weight"])
    thresholds = json.loads((out / "shapeqc_thresholds.json").read_text())
    assert set(thresholds["checks"]) == {f"shapeqc_flag_{s}" for s in SUBCORTICAL_NAMES[:4]}
    assert (out / "shapeqc_calibration.json").is_file() and (out / "sitting.json").is_file()
    # --record-only re-exports the last checkpoint's weights (the same file) and its record.
    record = json.loads((out / "sitting.json").read_text())
    recipe.main(["--cache", str(tmp_path / "cache"), "--out", str(out), "--record-only"])
    again = json.loads((out / "sitting.json").read_text())
    assert again["completed"] and again["weights_sha256"] == record["weights_sha256"]


def test_specificity_floor_keeps_good_people_unflagged():
    """Thresholds from an evaluation split with a specificity floor: no undamaged shape of
    the split is above its structure's threshold, and a structure whose good shapes score
    low keeps its ENIGMA threshold."""
    from bids_qc.structures import SUBCORTICAL_NAMES
    from bids_qc.training.shapeqc import calibration

    rng = np.random.default_rng(0)
    structures, scores, fail = [], [], []
    for k, s in enumerate(SUBCORTICAL_NAMES[:3]):
        good = rng.uniform(0.0, 0.3 + 0.3 * k, 30)       # the third structure's goods reach 0.9
        bad = rng.uniform(0.5, 1.0, 10)
        structures += [s] * 40
        scores += [*good, *bad]
        fail += [0] * 30 + [1] * 10
    structures, scores, fail = np.array(structures), np.array(scores), np.array(fail)
    plain = calibration(scores, fail, structures)
    floor = {s: float(scores[(structures == s) & (fail == 0)].max())
             for s in SUBCORTICAL_NAMES[:3]}  # fmt: skip
    floored = calibration(scores, fail, structures, floor=floor, source="test")
    for s in SUBCORTICAL_NAMES[:3]:
        cut = floored["checks"][f"shapeqc_flag_{s}"]["threshold"]
        assert cut >= scores[(structures == s) & (fail == 0)].max()
        assert cut >= plain["checks"][f"shapeqc_flag_{s}"]["threshold"]
    first = f"shapeqc_flag_{SUBCORTICAL_NAMES[0]}"
    assert floored["checks"][first]["threshold"] == plain["checks"][first]["threshold"]
    assert floored["created_by"].endswith("(test)") and "specificity_floor" in floored
