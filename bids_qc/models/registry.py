"""The model registry: which QC models exist, their weights, and what inputs they need.

The registry is the specs of the plugins (:data:`bids_qc.models.plugins.PLUGINS`), an
explicit tuple; nothing registers itself by import.
Weights ship inside the package (``bids_qc/models/weights/``) and load only after their
sha256 matches the registry (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from .plugin import ModelSpec, Need
from .plugins import PLUGINS

__all__ = ["KNOWN_MODELS", "REGISTRY", "ModelSpec", "Need", "get_spec", "installed_models",
           "load_extra_json", "load_state_dict", "missing_needs", "sha256sum", "weights_loads"]

#: Every QC model bids_qc knows, from its plugin (:data:`bids_qc.models.plugins.PLUGINS`);
#: ``experimental`` follows the real-data gate (:func:`bids_qc.models.plugin.gated_spec`).
REGISTRY: tuple[ModelSpec, ...] = tuple(p.spec for p in PLUGINS)

#: Names the CLI accepts for ``--models``: every plugin's (a known but uninstalled model is
#: skipped with a reason).
KNOWN_MODELS: tuple[str, ...] = tuple(p.name for p in PLUGINS)


def sha256sum(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def get_spec(name: str, registry: tuple[ModelSpec, ...] = REGISTRY) -> ModelSpec:
    """The spec called ``name``.

    Raises
    ------
    ValueError
        If no model of the registry has that name.
    """
    for spec in registry:
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in registry) or "none installed"
    raise ValueError(f"Unknown model {name!r}; models in this installation: {known}")


def installed_models(registry: tuple[ModelSpec, ...] = REGISTRY) -> tuple[ModelSpec, ...]:
    """The specs whose weights ship with this installation."""
    return tuple(s for s in registry if s.is_installed())


#: How many times this process has read each model's weights (``load_state_dict`` calls,
#: by model name). Models cache their network per process, so each count stays at 1 however
#: many images a process runs; benchmarks and tests read it through :func:`weights_loads`.
_LOADS: Counter[str] = Counter()


def weights_loads() -> dict[str, int]:
    """Model name -> how many times this process has loaded its weights."""
    return dict(_LOADS)


def load_state_dict(spec: ModelSpec, path: Path | None = None) -> dict[str, Any]:
    """Load a model's weights after checking their sha256 against the registry.

    Parameters
    ----------
    spec : ModelSpec
        The model.
    path : Path, optional
        Weights file (default: the installed one).

    Raises
    ------
    ValueError
        If the file is missing or its sha256 does not match (a corrupt or replaced file).
    """
    import torch

    path = Path(path) if path is not None else spec.weights_path()
    if not path.is_file():
        raise ValueError(
            f"Weights of model {spec.name!r} not found at {path}; reinstall bids_qc "
            "(the weights ship inside the package)."
        )
    actual = sha256sum(path)
    if actual != spec.sha256:
        raise ValueError(
            f"Weights {path} of model {spec.name!r} have sha256 {actual}, but the registry "
            f"expects {spec.sha256}; the file is corrupt or was replaced: reinstall bids_qc."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    _LOADS[spec.name] += 1
    if not isinstance(state, dict):
        raise ValueError(f"Weights {path} of model {spec.name!r} do not hold a state dict.")
    return state


def load_extra_json(spec: ModelSpec, name: str) -> Any:
    """A JSON file that ships with a model, after checking its sha256 against the registry.

    Raises
    ------
    ValueError
        If the model lists no such file, or the file is missing or does not match.
    """
    import json

    expected = dict(spec.extra_files).get(name)
    if expected is None:
        raise ValueError(f"model {spec.name!r} ships no file {name!r}")
    path = Path(str(resources.files("bids_qc.models") / "weights" / name))
    if not path.is_file():
        raise ValueError(f"{path} of model {spec.name!r} is missing; reinstall bids_qc")
    actual = sha256sum(path)
    if actual != expected:
        raise ValueError(f"{path} of model {spec.name!r} has sha256 {actual}, but the registry "
                         f"expects {expected}; the file is corrupt or was replaced: reinstall "
                         "bids_qc.")
    return json.loads(path.read_text(encoding="utf-8"))


def missing_needs(spec: ModelSpec, available: set[str]) -> list[str]:
    """Which of the model's needs are not in ``available`` (empty when it can run)."""
    return [n for n in spec.needs if n not in available]
