"""The model registry: which QC models exist, their weights, and what inputs they need.

The registry is an explicit tuple of :class:`ModelSpec`; nothing registers itself by import.
Weights ship inside the package (``bids_qc/models/weights/``) and load only after their
sha256 matches the registry (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .gate import passes

#: Inputs a model may need, as QCInput roles: ``template_t1w`` (a T1w in template space, or
#: anything that gets there), ``seg`` (a FreeSurfer-coded segmentation), ``t1w`` (any native
#: T1w image).
Need = Literal["template_t1w", "seg", "t1w"]


@dataclass(frozen=True)
class ModelSpec:
    """One QC model.

    Parameters
    ----------
    name : str
        CLI and column prefix (``regqc``).
    version : str
        Model version, recorded in the provenance.
    weights : str
        File name under ``bids_qc/models/weights/`` ("" for models without weights).
    sha256 : str
        Expected sha256 of the weights file.
    needs : tuple of str
        Inputs the model needs; a row lacking one skips the model with that reason.
    description : str
        One line for ``--help`` and the reports.
    experimental : bool
        Runs only when named in ``--models``: its real-data figures do not pass the gate
        (:mod:`bids_qc.models.gate`), so its flags could mislead. The registry below sets it
        from the generated figures, never by hand.
    extra_files : tuple of (str, str)
        Further files under ``weights/`` that ship with the model (thresholds, calibration
        data), each with its expected sha256; read with :func:`load_extra_json`.
    """

    name: str
    version: str
    weights: str
    sha256: str
    needs: tuple[Need, ...]
    description: str = ""
    experimental: bool = False
    extra_files: tuple[tuple[str, str], ...] = ()

    def weights_path(self) -> Path:
        """The installed weights file."""
        return Path(str(resources.files("bids_qc.models") / "weights" / self.weights))

    def is_installed(self) -> bool:
        """Whether the weights file ships with this installation."""
        return bool(self.weights) and self.weights_path().is_file()


#: The sha256 of each model's shipped weights (its card and real-data figures are stamped
#: with it). A model is *installed* when its weights file ships.
_REGQC_SHA = "9dda0cffa42bdd97157908e459964cf8dd53cdb273babb07b4a18e2ff67b8c2b"
_SEGQC_SHA = "cff3e20167615fea5611f3ea9d1c4eb975a4864ea29e2690c341866a7532e921"
_MANIFOLDQC_SHA = "72ce5568a53ffbbee566e0af4a7f9d245c9ee2be2b576b9390feb04db895aa26"
_SHAPEQC_SHA = "95eff42aea27029d1e3ce9f31a4be3eb446f8c65277f8efe06683517ef40c4c5"
_VINN_SHA = "e016e0c433d70b2295b411ae72b1c8926c09176238932c841c782dfa289733fd"

#: Every QC model bids_qc knows; ``experimental`` follows the real-data gate.
REGISTRY: tuple[ModelSpec, ...] = (
    ModelSpec("regqc", "1.1.0", "regqc.pt",
              _REGQC_SHA, ("template_t1w",),
              "Residual misregistration to the template (mm), RegQCNET-style CNN",
              experimental=not passes("regqc", _REGQC_SHA)),
    ModelSpec("segqc", "1.0.0", "segqc.pt",
              _SEGQC_SHA, ("seg", "t1w"),
              "Dice of each structure of a FreeSurfer-coded segmentation (3D ResNet, SegQC)",
              experimental=not passes("segqc", _SEGQC_SHA)),
    ModelSpec("manifoldqc", "1.2.0", "manifoldqc.pt",
              _MANIFOLDQC_SHA, ("seg", "t1w"),
              "Dice of the 14 subcortical structures against a surrogate found on a VAE's "
              "manifold of good image-segmentation pairs (ManifoldQC)",
              experimental=not passes("manifoldqc", _MANIFOLDQC_SHA)),
    ModelSpec("shapeqc", "1.1.0", "shapeqc.pt",
              _SHAPEQC_SHA, ("seg",),
              "P(FAIL) of each subcortical structure's shape: spherical thickness/area maps, "
              "2D ResNet, Grad-CAM (ShapeQC)",
              experimental=not passes("shapeqc", _SHAPEQC_SHA),
              extra_files=(("shapeqc_thresholds.json",
                            "876de1f60f5ae60db57b54a7bc3ae101016c31f794fd8f0c30a577a1cd8f3a4a"),
                           ("shapeqc_calibration.json",
                            "2e24714c47ddebe537495931b119d4af7df5190d6da658b6fe32ddc7809bbfef"))),
    ModelSpec("vinn", "1.1.0", "vinn.pt",
              _VINN_SHA, ("t1w",),
              "Segmentation of the T1w when no derivative has one (2.5D VINN, FreeSurfer codes)",
              # VINN's gate (Dice against real references, plausible volumes) is measured
              # by its own issue; until then it is below the gate.
              experimental=not passes("vinn", _VINN_SHA)),
)

#: Names the CLI accepts for ``--models`` (models of later releases included, so a
#: pipeline written today keeps parsing; a known but uninstalled model is skipped with a reason).
KNOWN_MODELS: tuple[str, ...] = ("regqc", "segqc", "manifoldqc", "shapeqc", "vinn")


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
