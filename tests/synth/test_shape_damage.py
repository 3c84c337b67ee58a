"""Shape failures: measured FAIL truth, identity at severity 0, locality, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from bids_qc.structures import get_structure
from bids_qc.synth.phantom import make_phantom
from bids_qc.synth.shape_damage import (
    FAIL_DICE,
    FAIL_HAUSDORFF,
    SHAPE_FAMILIES,
    ShapeCase,
    damage_shape,
)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return make_phantom((56, 56, 56))[0]


def _plain_dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_registry_names() -> None:
    assert set(SHAPE_FAMILIES) == {"truncation", "bump", "spike", "hole", "leak", "merged",
                                   "displaced"}  # fmt: skip


@pytest.mark.parametrize("family", sorted(SHAPE_FAMILIES))
@pytest.mark.parametrize("structure", ["left_putamen", "right_thalamus"])
def test_family_truth(family: str, structure: str, labels: np.ndarray) -> None:
    mask = get_structure(structure).mask(labels)
    clean = damage_shape(labels, structure, family, 0, 0.0)
    assert isinstance(clean, ShapeCase) and not clean.fail
    assert np.array_equal(clean.labels, labels)
    bad = damage_shape(labels, structure, family, 0, 1.0)
    after = get_structure(structure).mask(bad.labels)
    assert bad.structure == structure and bad.family == family
    assert bad.fail
    assert bad.dice == pytest.approx(_plain_dice(mask, after))
    assert bad.fail == (bad.dice < FAIL_DICE or bad.hausdorff >= FAIL_HAUSDORFF)
    # The other hemisphere is untouched: damage stays local.
    half = slice(0, 28) if structure.startswith("right") else slice(28, 56)
    assert np.array_equal(bad.labels[half], labels[half])


@pytest.mark.parametrize("family", sorted(SHAPE_FAMILIES))
def test_determinism(family: str, labels: np.ndarray) -> None:
    a = damage_shape(labels, "left_hippocampus", family, 4, 0.6)
    b = damage_shape(labels, "left_hippocampus", family, 4, 0.6)
    assert np.array_equal(a.labels, b.labels) and a.fail == b.fail


def test_severity_grows_damage(labels: np.ndarray) -> None:
    for family in ("truncation", "bump", "hole", "displaced"):
        low = damage_shape(labels, "left_thalamus", family, 2, 0.1).dice
        high = damage_shape(labels, "left_thalamus", family, 2, 1.0).dice
        assert high < low, family


def test_bad_inputs(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown shape family"):
        damage_shape(labels, "left_thalamus", "twist", 0, 0.5)
    with pytest.raises(ValueError, match="Unknown structure"):
        damage_shape(labels, "left_nose", "bump", 0, 0.5)
    with pytest.raises(ValueError, match="whole_brain"):
        damage_shape(labels, "whole_brain", "bump", 0, 0.5)
    with pytest.raises(ValueError, match="absent"):
        damage_shape(np.where(labels == 10, 2, labels), "left_thalamus", "bump", 0, 0.5)
    with pytest.raises(ValueError, match="severity"):
        damage_shape(labels, "left_thalamus", "bump", 0, -0.1)
