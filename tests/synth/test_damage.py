"""Segmentation damage: exact reported Dice, lowered Dice, determinism, registry, guards."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bids_qc.structures import STRUCTURES
from bids_qc.synth.damage import DAMAGE_FAMILIES, DamageCase, damage
from bids_qc.synth.phantom import make_phantom
from bids_qc.synth.synthesize import synthesize


def _plain_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Reference Dice, written independently of bids_qc.synth.metrics."""
    inter = np.logical_and(a, b).sum()
    size = a.sum() + b.sum()
    return float("nan") if size == 0 else 2.0 * inter / size


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray]:
    labels, affine = make_phantom((48, 48, 48))
    synth = synthesize(labels, affine, 0, resolution=1.0, deform=False, skull_strip=True)
    return synth.labels, synth.image


def test_registry_names() -> None:
    expected = {"intensity_classifier", "kmeans", "erosion", "dilation", "partial_volume",
                "misalignment", "lr_swap", "missing", "merge", "leak"}  # fmt: skip
    assert expected <= set(DAMAGE_FAMILIES)
    assert all(callable(f) for f in DAMAGE_FAMILIES.values())


@pytest.mark.parametrize("family", sorted(DAMAGE_FAMILIES))
def test_reported_dice_is_exact_and_lowered(family: str, case) -> None:
    labels, image = case
    out = damage(labels, family, seed=3, severity=0.7, image=image)
    assert isinstance(out, DamageCase) and out.family == family and out.severity == 0.7
    assert out.labels.shape == labels.shape and out.labels.dtype == np.int32
    for s in STRUCTURES:
        ref = _plain_dice(s.mask(labels), s.mask(out.labels))
        got = out.dice[s.name]
        assert (math.isnan(ref) and math.isnan(got)) or got == pytest.approx(ref, abs=1e-12)
    assert min(v for v in out.dice.values() if not math.isnan(v)) < 1.0


@pytest.mark.parametrize("family", sorted(DAMAGE_FAMILIES))
def test_severity_zero_is_identity_and_seed_determinism(family: str, case) -> None:
    labels, image = case
    assert np.array_equal(damage(labels, family, 1, 0.0, image=image).labels, labels)
    a = damage(labels, family, 11, 0.5, image=image).labels
    b = damage(labels, family, 11, 0.5, image=image).labels
    assert np.array_equal(a, b)
    others = [damage(labels, family, s, 0.5, image=image).labels for s in (12, 13, 14)]
    assert any(not np.array_equal(a, o) for o in others)


@pytest.mark.parametrize("family", ["intensity_classifier", "kmeans"])
def test_weak_segmenters_worsen_with_noise(family: str, case) -> None:
    labels, image = case

    def mean_dice(severity: float) -> float:
        return float(np.mean([np.nanmean(list(damage(labels, family, s, severity,
                                                      image=image).dice.values()))
                              for s in range(3)]))  # fmt: skip

    assert mean_dice(1.0) < mean_dice(0.1) < 1.0


def test_weak_segmenter_without_image(case) -> None:
    labels, _ = case
    out = damage(labels, "kmeans", 0, 0.5)
    assert out.labels.shape == labels.shape
    assert np.nanmin(list(out.dice.values())) < 1.0


def test_lr_swap_exchanges_codes() -> None:
    labels = np.zeros((10, 10, 10), np.int32)
    labels[1:4, 1:4, 1:4] = 17
    labels[6:9, 6:9, 6:9] = 53
    out = damage(labels, "lr_swap", 0, 1.0)
    assert np.array_equal(out.labels[1:4, 1:4, 1:4], np.full((3, 3, 3), 53))
    assert out.dice["left_hippocampus"] == 0.0 and out.dice["right_hippocampus"] == 0.0
    assert out.dice["whole_brain"] == 1.0


def test_bad_inputs(case) -> None:
    labels, image = case
    with pytest.raises(ValueError, match="unknown damage family"):
        damage(labels, "melt", 0, 0.5)
    with pytest.raises(ValueError, match="severity"):
        damage(labels, "erosion", 0, 1.5)
    with pytest.raises(ValueError, match="grid"):
        damage(labels, "kmeans", 0, 0.5, image=image[:-1])
    with pytest.raises(ValueError):
        damage(labels[0], "erosion", 0, 0.5)
