"""The model registry: sha256 check before loading, weights_only loading, needs."""

from __future__ import annotations

import hashlib

import pytest
import torch

from bids_qc.models import registry
from bids_qc.models.registry import ModelSpec, get_spec, load_state_dict, missing_needs


class _NotAllowed:
    """A class that a weights file must never be able to instantiate."""


def _spec(tmp_path, sha: str | None = None) -> tuple[ModelSpec, object]:
    path = tmp_path / "w.pt"
    torch.save({"layer.weight": torch.arange(6.0).reshape(2, 3)}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ModelSpec("toy", "1", "w.pt", sha or digest, ("seg",)), path


def test_weights_load_after_sha_check(tmp_path):
    spec, path = _spec(tmp_path)
    state = load_state_dict(spec, path)
    assert torch.equal(state["layer.weight"], torch.arange(6.0).reshape(2, 3))


def test_wrong_sha_refuses_to_load(tmp_path):
    spec, path = _spec(tmp_path, sha="0" * 64)
    with pytest.raises(ValueError, match="corrupt or was replaced"):
        load_state_dict(spec, path)


def test_missing_weights_and_pickles_are_refused(tmp_path):
    spec, path = _spec(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        load_state_dict(spec, tmp_path / "absent.pt")

    # weights_only=True must refuse arbitrary pickled objects.
    evil = tmp_path / "evil.pt"
    torch.save({"x": _NotAllowed()}, evil)
    evil_spec = ModelSpec("toy", "1", "evil.pt", hashlib.sha256(evil.read_bytes()).hexdigest(),
                          ())
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_state_dict(evil_spec, evil)


def test_needs_and_lookup():
    spec = ModelSpec("toy", "1", "", "", ("seg", "t1w"))
    assert missing_needs(spec, {"t1w"}) == ["seg"]
    assert missing_needs(spec, {"t1w", "seg"}) == []
    with pytest.raises(ValueError, match="Unknown model"):
        get_spec("nope", (spec,))
    assert get_spec("toy", (spec,)) is spec
    assert not spec.is_installed()


def test_every_registered_model_ships_matching_weights():
    for spec in registry.REGISTRY:
        assert spec.is_installed(), f"{spec.name}: weights file {spec.weights} missing"
        assert registry.sha256sum(spec.weights_path()) == spec.sha256


def test_experimental_models_run_only_when_named():
    from bids_qc.runner import select_models

    experimental = [s.name for s in registry.installed_models() if s.experimental]
    stable = [s.name for s in registry.installed_models() if not s.experimental]
    default = select_models(None)
    assert [m.name for m in default.models] == stable
    reasons = {s["model"]: s["reason"] for s in default.skipped}
    for name in experimental:
        assert "experimental" in reasons[name] and f"--models {name}" in reasons[name]
        assert [m.name for m in select_models((name,)).models] == [name]
    missing = set(registry.KNOWN_MODELS) - {s.name for s in registry.REGISTRY}
    for name in missing:  # known names of later releases: skipped with the reason
        assert "not available" in reasons[name]
