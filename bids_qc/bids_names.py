"""BIDS file names and entities, and raw sidecars: pure logic, no pybids.

Shared by the dataset walk (:mod:`bids_qc.bids`), its pybids adapter
(:mod:`bids_qc.bids_layout`) and the derivatives finder (:mod:`bids_qc.bids_derivatives`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger("bids_qc.bids")

#: Entities that tell one T1w image from another (pybids names, BIDS file-name order).
IDENTITY = (
    "subject", "session", "acquisition", "ceagent", "reconstruction", "run", "echo", "part",
)
_PREFIX = dict(zip(IDENTITY, ("sub", "ses", "acq", "ce", "rec", "run", "echo", "part")))
LONG_ENTITIES = {short: long for long, short in _PREFIX.items()}
#: Entities whose labels are indices: fMRIPrep may write ``run-1`` for ``run-01``.
INDEX_ENTITIES = frozenset({"run", "echo"})
NIFTI = (".nii", ".nii.gz")


def normalise_labels(labels: Iterable[str], prefix: str) -> tuple[str, ...]:
    """Labels without their ``prefix-`` (``sub``/``ses``), deduplicated, in order.

    >>> normalise_labels(["sub-01", "01", " 02"], "sub")
    ('01', '02')
    """
    head = prefix.rstrip("-") + "-"
    out: list[str] = []
    for label in labels:
        label = str(label).strip()
        if label.startswith(head):
            label = label[len(head):]
        if label and label not in out:
            out.append(label)
    return tuple(out)


def bids_name(entities: Mapping[str, str]) -> str:
    """``sub-X[_ses-Y][_acq-Z][_ce-C][_rec-W][_run-N][_echo-E][_part-P]_T1w``."""
    parts = [f"{_PREFIX[k]}-{entities[k]}" for k in IDENTITY if entities.get(k) is not None]
    return "_".join(parts + ["T1w"])


@dataclass
class Row:
    entities: dict[str, str]
    t1w: Path | None = None

    @property
    def name(self) -> str:
        return bids_name(self.entities)


def read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def name_entities(name: str) -> dict[str, str] | None:
    """Entities (and ``suffix``) of a BIDS file name with or without ``sub-``."""
    stem = name[: len(name) - len(extension(name))]
    *pairs, suffix = stem.split("_")
    entities = {"suffix": suffix}
    for pair in pairs:
        key, sep, value = pair.partition("-")
        if not sep or not value:
            return None
        entities[LONG_ENTITIES.get(key, key)] = value
    return entities


def parse_name(name: str) -> dict[str, str] | None:
    """Entities of a BIDS file name (pybids names), or None if it is not one."""
    entities = name_entities(name)
    return entities if entities is not None and "subject" in entities else None


def extension(name: str) -> str:
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def equal_entity(name: str, a: str, b: str) -> bool:
    """Entity values equal; ``run-1`` is ``run-01`` (index entities), ``sub-1`` is not."""
    if a == b:
        return True
    return name in INDEX_ENTITIES and a.isdigit() and b.isdigit() and int(a) == int(b)


def identity(entities: Mapping[str, Any]) -> dict[str, str]:
    # str() keeps a run's zero padding (pybids' PaddedInt)
    return {k: str(entities[k]) for k in IDENTITY if entities.get(k) is not None}


#: Sidecar fields that tell scanners apart: the group level's robust z-scores are computed
#: per acquisition group (see :mod:`bids_qc.robust_z`).
SIDECAR_FIELDS = ("Manufacturer", "MagneticFieldStrength")


def sidecar_fields(t1w: Path, bids_dir: Path, listings: dict[str, list[str]]
                    ) -> dict[str, str | float]:
    """:data:`SIDECAR_FIELDS` of a raw T1w, by the BIDS inheritance principle.

    Every ``*T1w.json`` in the image's folder or a folder above it (up to ``bids_dir``)
    whose entities the image has applies; deeper and more specific files win. Read here,
    not through pybids (which does not index metadata, see :func:`open_layout`), so that one
    sidecar that is not JSON costs its own fields only.

    Parameters
    ----------
    t1w : Path
        The raw image.
    bids_dir : Path
        The dataset root.
    listings : dict
        Folder -> its file names, shared between the images of one walk (the root and
        subject folders are listed once).
    """
    image = name_entities(t1w.name)
    if image is None:
        return {}
    folders = []
    folder = t1w.parent
    while True:
        folders.append(folder)
        if folder == bids_dir or folder.parent == folder or bids_dir not in folder.parents:
            break
        folder = folder.parent
    found: dict[str, str | float] = {}
    for folder in reversed(folders):  # the root first: deeper files override
        key = str(folder)
        if key not in listings:
            try:
                listings[key] = sorted(n for n in os.listdir(folder) if n.endswith("T1w.json"))
            except OSError:
                listings[key] = []
        applicable = []
        for name in listings[key]:
            entities = name_entities(name)
            if entities is not None and entities.get("suffix") == "T1w" and all(
                    k in image and equal_entity(k, v, image[k])
                    for k, v in entities.items() if k != "suffix"):
                applicable.append((len(entities), name))
        for _, name in sorted(applicable):
            data = read_json(folder / name)
            if not isinstance(data, dict):
                LOGGER.debug("sidecar %s is not a JSON object; ignored", folder / name)
                continue
            for field_name in SIDECAR_FIELDS:
                value = data.get(field_name)
                if isinstance(value, str) or (isinstance(value, (int, float))
                                              and not isinstance(value, bool)):
                    found[field_name] = value
    return found
