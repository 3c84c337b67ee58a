"""Real data for calibration and evaluation: the split table and the IXI/DLMUSE people.

Every recipe and evaluation reads which real item belongs to which part (training,
calibration, test) through :func:`load_splits`; nothing else may hard-code a split. The IXI
people's DLMUSE segmentations use MUSE label codes; :func:`muse_to_freesurfer` maps them to
the FreeSurfer codes of bids_qc's structure contract (:mod:`bids_qc.structures`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

Part = Literal["training", "calibration", "test"]
PARTS: tuple[Part, ...] = ("training", "calibration", "test")


@dataclass(frozen=True)
class Splits:
    """The split table: ``(dataset, item) -> part``.

    Parameters
    ----------
    parts : dict
        ``(dataset, item)`` -> one of :data:`PARTS`.
    source : Path
        The ``splits.tsv`` it was read from (named in errors).
    """

    parts: dict[tuple[str, str], Part]
    source: Path

    def part(self, dataset: str, item: str) -> Part:
        """The part of one item.

        Raises
        ------
        KeyError
            If the table does not list the item (so it may not be used at all).
        """
        try:
            return self.parts[(dataset, item)]
        except KeyError:
            raise KeyError(f"{dataset}/{item} is not listed in {self.source}; an item without "
                           "a part may not be used for training, calibration or test") from None

    def items(self, dataset: str, part: Part) -> tuple[str, ...]:
        """The items of one dataset in one part, sorted."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
        return tuple(sorted(i for (d, i), p in self.parts.items() if d == dataset and p == part))

    def datasets(self) -> tuple[str, ...]:
        """The datasets the table lists."""
        return tuple(sorted({d for d, _ in self.parts}))


def load_splits(path: str | Path) -> Splits:
    """Read ``splits.tsv`` (columns ``dataset``, ``item``, ``part``).

    Parameters
    ----------
    path : str or Path
        The table, or the data folder that holds it.

    Raises
    ------
    ValueError
        If the file is missing, lacks a column, names an unknown part or lists an item twice.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "splits.tsv"
    if not path.is_file():
        raise ValueError(f"split table {path} not found: point to ../shared/data/splits.tsv")
    parts: dict[tuple[str, str], Part] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = {"dataset", "item", "part"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            key = (row["dataset"].strip(), row["item"].strip())
            part = row["part"].strip()
            if part not in PARTS:
                raise ValueError(f"{path} line {line}: part {part!r} is not one of "
                                 f"{', '.join(PARTS)}")
            if key in parts:
                raise ValueError(f"{path} line {line}: {key[0]}/{key[1]} is listed twice")
            parts[key] = part  # type: ignore[assignment]
    return Splits(parts, path)


#: MUSE code -> FreeSurfer code (names from DLMUSE's ``list_MUSE_single.csv``; ``_R``/``_L``
#: are the subject's right and left): the one-to-one ROIs, then the lobar white matter,
#: fornix and internal capsule (81-94, odd codes right) as cerebral white matter (41/2) and
#: the cortical ROIs (100-207, even codes right) as cerebral cortex (42/3), as an aseg
#: has them. The vermis lobules, basal forebrain and corpus callosum have no one-to-one
#: aseg label; :func:`muse_to_freesurfer` gives them their nearest neighbour's label
#: (FreeSurfer splits the vermis between the two cerebellar cortices the same way).
#: Non-brain code 1 stays 0.
MUSE_TO_FREESURFER: dict[int, int] = {
    4: 14,    # 3rdVentricle
    11: 15,   # 4thVentricle
    23: 58, 30: 26,   # AccumbensArea R, L
    31: 54, 32: 18,   # Amygdala R, L
    35: 16,   # BrainStem
    36: 50, 37: 11,   # Caudate R, L
    38: 47, 39: 8,    # CerebellumExterior R, L (cerebellar cortex)
    40: 46, 41: 7,    # Cerebellum_WM R, L
    47: 53, 48: 17,   # Hippocampus R, L
    49: 44, 50: 5,    # InfLatVentricle R, L
    51: 43, 52: 4,    # LateralVentricle R, L
    55: 52, 56: 13,   # Pallidum R, L
    57: 51, 58: 12,   # Putamen R, L
    59: 49, 60: 10,   # ThalamusProper R, L
    61: 60, 62: 28,   # VentralDC R, L
    **{c: 41 if c % 2 else 2 for c in range(81, 95)},     # cerebral white matter R, L
    **{c: 42 if c % 2 == 0 else 3 for c in range(100, 208)},  # cerebral cortex R, L
}  # fmt: skip



def muse_to_freesurfer(labels: np.ndarray) -> np.ndarray:
    """Map a MUSE-coded label array to FreeSurfer codes (unmapped codes become 0)."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        rounded = np.rint(labels)
        if not np.allclose(labels, rounded):
            raise ValueError("a MUSE label map must hold integer codes")
        labels = rounded.astype(np.int64)
    lut = np.zeros(int(max(labels.max(initial=0), max(MUSE_TO_FREESURFER))) + 1, np.int16)
    for muse, fs in MUSE_TO_FREESURFER.items():
        lut[muse] = fs
    if labels.min(initial=0) < 0:
        raise ValueError("a MUSE label map cannot hold negative codes")
    out = lut[labels]
    # Brain ROIs without an aseg label (vermis 71-73, basal forebrain 75-76, corpus
    # callosum 95, the unlisted codes 46 and 69 DLMUSE writes on a few voxels) take their
    # nearest mapped neighbour's label, so the brain has no unlabelled hole.
    fill = (labels > 1) & (out == 0)
    if fill.any() and (out > 0).any():
        from scipy import ndimage as ndi

        _, nearest = ndi.distance_transform_edt(out == 0, return_indices=True)
        out[fill] = out[tuple(idx[fill] for idx in nearest)]
    return out


@dataclass(frozen=True)
class IXIPerson:
    """One IXI person: the whole-head T1w and its DLMUSE segmentation (same grid)."""

    item: str
    t1w: Path
    dlmuse: Path


def ixi_people(data_dir: str | Path, part: Part, splits: Splits | None = None
               ) -> tuple[IXIPerson, ...]:
    """The IXI/DLMUSE people of one part, with their files.

    Raises
    ------
    ValueError
        If a listed person's image or segmentation is missing.
    """
    data_dir = Path(data_dir)
    splits = splits or load_splits(data_dir)
    people = []
    for item in splits.items("ixi_dlmuse", part):
        t1w = data_dir / "ixi_dlmuse" / "t1" / f"{item}_T1.nii.gz"
        seg = data_dir / "ixi_dlmuse" / "dlmuse" / f"{item}_T1_DLMUSE.nii.gz"
        for f in (t1w, seg):
            if not f.is_file():
                raise ValueError(f"{f} is listed in {splits.source} but missing")
        people.append(IXIPerson(item, t1w, seg))
    return tuple(people)
