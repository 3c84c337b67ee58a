"""Property-based checks of the metrics and the misregistration sampler."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bids_qc.synth.metrics import affine_rmse, dice
from bids_qc.synth.misregistration import sample_affine

SHAPE = (12, 14, 10)
AFFINE = np.diag([6.0, 6.0, 6.0, 1.0])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_dice_symmetric_and_bounded(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.random((6, 7, 5)) < rng.random()
    b = rng.random((6, 7, 5)) < rng.random()
    d = dice(a, b)
    assert np.isnan(d) or (0.0 <= d <= 1.0 and d == dice(b, a))


@settings(max_examples=20, deadline=None)
@given(st.floats(0.01, 40.0), st.integers(0, 2**32 - 1))
def test_sample_affine_hits_any_target(target: float, seed: int) -> None:
    A = sample_affine(np.random.default_rng(seed), target, SHAPE, AFFINE)
    assert abs(affine_rmse(A, SHAPE, AFFINE) - target) < 1e-3


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=3, max_size=3))
def test_rmse_of_translation_is_its_norm(t: list[float]) -> None:
    A = np.eye(4)
    A[:3, 3] = t
    assert abs(affine_rmse(A, SHAPE, AFFINE) - float(np.linalg.norm(t))) < 1e-4
