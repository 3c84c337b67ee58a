"""VINN's training recipe (pool keys, patches, loss) and its card's helpers, on small
phantoms (no shared data needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_qc.models import vinn
from bids_qc.synth.labelmaps import EVAL_MAPS, TRAIN_MAPS
from bids_qc.synth.phantom import make_phantom
from bids_qc.training import vinn as recipe
from bids_qc.training.vinn_card import confusion, previous_section


@pytest.fixture(autouse=True, scope="module")
def _threads():
    torch.set_num_threads(1)


def test_pool_cycles_every_contrast_over_training_maps_only():
    keys = [recipe.case_key(i, 7) for i in range(3 * len(TRAIN_MAPS))]
    assert {m for m, _, _ in keys} == set(TRAIN_MAPS)
    assert not {m for m, _, _ in keys} & set(EVAL_MAPS)
    assert {c for _, c, _ in keys} == set(recipe.CONTRASTS) >= {"random"}
    # Every map meets every family within three passes over the maps.
    pairs = {(m, c) for m, c, _ in keys}
    assert len(pairs) == len(TRAIN_MAPS) * len(recipe.CONTRASTS)
    assert len({s for _, _, s in keys}) == len(keys)


def _phantom_case(tmp_path):
    labels, affine = make_phantom((40, 40, 40), voxel_size=1.5)
    classes = vinn.code_to_class(labels).astype(np.uint8)
    image = vinn.normalise_intensity(np.where(labels > 0, 40 + (labels % 7) * 15, 0))
    path = tmp_path / "case.npz"
    np.savez(path, image=image.astype(np.float16), labels=classes, vox=np.full(3, 1.5))
    return recipe.Case(path, 0)


def test_batches_are_patches_of_the_case_at_its_voxel_size(tmp_path):
    case = _phantom_case(tmp_path)
    x, y, scale = recipe.make_batch([case], "coronal", 4, np.random.default_rng(1))
    side = round(recipe.PATCH_MM / 1.5)
    assert x.shape == (4, vinn.N_SLICES, side, side) and y.shape == (4, side, side)
    assert y.dtype == torch.int64 and int(y.max()) < vinn.N_CLASSES
    assert all(abs(s - 1.5) < 0.6 for s in scale)  # the voxel size, jittered
    # Labels of a patch come from the case: most patches are centred on a subcortical voxel.
    assert np.isin(np.unique(y.numpy()), np.unique(case.labels)).all()
    again, _, _ = recipe.make_batch([case], "coronal", 4, np.random.default_rng(1))
    assert torch.equal(x, again)


def test_gamma_augmentation_is_one_power_per_patch(tmp_path):
    case = _phantom_case(tmp_path)
    plain, y0, s0 = recipe.make_batch([case], "axial", 4, np.random.default_rng(3))
    aug, y1, s1 = recipe.make_batch([case], "axial", 4, np.random.default_rng(3), 0.4)
    assert torch.equal(y0, y1) and s0 == s1  # same patches, same scale
    gammas = []
    for p, a in zip(plain, aug):
        sel = (p > 0.05) & (p < 0.95)
        g = torch.log(a[sel]) / torch.log(p[sel])  # a = p ** g on every pixel
        assert float(g.std()) < 1e-3
        gammas.append(float(g.mean()))
    assert len({round(g, 3) for g in gammas}) == 4 and not any(abs(g - 1) < 1e-3 for g in gammas)


def test_one_view_learns_a_phantom_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "PATCH_MM", 60.0)  # the phantom's size: few padded pixels
    case = _phantom_case(tmp_path)
    x, y, scale = recipe.make_batch([case], "axial", 4, np.random.default_rng(2))
    weights = torch.as_tensor(recipe.class_weights([case.labels], vinn.N_CLASSES),
                              dtype=torch.float32)  # fmt: skip
    torch.manual_seed(0)
    net = vinn.VINNView(vinn.N_CLASSES, (8, 8, 12, 16, 16))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = recipe.loss_fn(net(x, scale), y, weights)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    net.eval()
    with torch.no_grad():
        acc = float((net(x, scale).argmax(1) == y).float().mean())
    assert losses[-1] < 0.5 * losses[0] and acc > 0.85, (losses[0], losses[-1], acc)


def test_loss_weights_boundaries_and_rare_classes():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 2:6, 2:6] = 1
    edge = recipe.boundary(labels)[0]
    assert edge[2, 3] and edge[1, 3] and not edge[4, 4] and not edge[0, 0]
    w = recipe.class_weights([labels.numpy().astype(np.uint8)], vinn.N_CLASSES)
    # The rare class is up-weighted; the frequent and the absent ones keep weight 1 (the
    # floor: without it the background's weight fell to 0.67 here, and to 0.001 on heads).
    assert w[1] == pytest.approx(2.0) and w[0] == 1.0 and w[2] == 1.0


def test_confusion_names_what_took_a_structure():
    truth = np.zeros((10, 10), np.int32)
    truth[0] = 12  # left putamen, 10 voxels
    pred = np.zeros_like(truth)
    pred[0, :6], pred[0, 6:9], pred[0, 9] = 12, 2, 13
    out = confusion(truth, pred)
    own, code, share = out["left_putamen"]
    assert own == pytest.approx(0.6) and code == 2 and share == pytest.approx(0.3)
    assert "left_thalamus" not in out  # absent from the truth


def test_previous_section_compares_like_with_like():
    def result(sub: float) -> dict:
        one = dict.fromkeys(["subcortical_mean", "cerebellum", "brainstem"], sub)
        return {r: dict(one, subcortical_mean=sub + d)
                for r, d in (("1.0", 0.0), ("0.8", -0.05), ("1.4", 0.01))}  # fmt: skip

    prev = {"sha256": "ab" * 32, "bert": result(0.2),
            "synth": {"1.0": {"mean": {"subcortical_mean": 0.4}}}}  # fmt: skip
    rows = previous_section(prev, result(0.5), {"1.0": {"mean": {"subcortical_mean": 0.7}}})
    text = "\n".join(rows)
    assert "| bert 1 mm, mean subcortical Dice | 0.200 | 0.500 |" in text
    assert "| bert, largest change across 0.8-1.4 mm | 0.050 | 0.050 |" in text
    assert "| held-out synthetic 1.0 mm, mean subcortical Dice | 0.400 | 0.700 |" in text
    assert "0.7 mm" not in text  # only resolutions both runs measured
