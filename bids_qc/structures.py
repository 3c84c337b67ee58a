"""The structures every bids_qc check reports on, with their FreeSurfer label codes.

This is the one place that maps structure names (public column names such as
``vol_left_hippocampus`` or ``segqc_dice_left_hippocampus``) to FreeSurfer codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Structure:
    """A named structure of a FreeSurfer-coded segmentation.

    Parameters
    ----------
    name : str
        Public name, used in column names (``left_hippocampus``).
    codes : tuple of int
        FreeSurfer label codes that make up the structure.
    code_ranges : tuple of (int, int)
        Inclusive ranges of further codes (cortical parcels 1000-2999).
    all_nonzero : bool
        The structure is every non-zero label (``whole_brain``).
    """

    name: str
    codes: tuple[int, ...] = ()
    code_ranges: tuple[tuple[int, int], ...] = ()
    all_nonzero: bool = False

    def mask(self, labels: np.ndarray) -> np.ndarray:
        """Boolean mask of this structure in an integer label array."""
        if self.all_nonzero:
            return labels != 0
        out = np.isin(labels, self.codes)
        for lo, hi in self.code_ranges:
            out |= (labels >= lo) & (labels <= hi)
        return out


#: The 14 subcortical structures (7 per hemisphere), as checked by ENIGMA-Shape.
SUBCORTICAL: tuple[Structure, ...] = (
    Structure("left_thalamus", (10,)),
    Structure("right_thalamus", (49,)),
    Structure("left_caudate", (11,)),
    Structure("right_caudate", (50,)),
    Structure("left_putamen", (12,)),
    Structure("right_putamen", (51,)),
    Structure("left_pallidum", (13,)),
    Structure("right_pallidum", (52,)),
    Structure("left_hippocampus", (17,)),
    Structure("right_hippocampus", (53,)),
    Structure("left_amygdala", (18,)),
    Structure("right_amygdala", (54,)),
    Structure("left_accumbens", (26,)),
    Structure("right_accumbens", (58,)),
)

#: Larger tissue groups and the whole brain.
GROUPS: tuple[Structure, ...] = (
    Structure("cerebral_white_matter", (2, 41)),
    Structure("cerebral_cortex", (3, 42), code_ranges=((1000, 2999),)),
    Structure("lateral_ventricles", (4, 43)),
    Structure("cerebellum", (7, 8, 46, 47)),
    Structure("brainstem", (16,)),
    Structure("whole_brain", all_nonzero=True),
)

#: Every structure of the contract, in the public column order.
STRUCTURES: tuple[Structure, ...] = SUBCORTICAL + GROUPS

STRUCTURE_NAMES: tuple[str, ...] = tuple(s.name for s in STRUCTURES)
SUBCORTICAL_NAMES: tuple[str, ...] = tuple(s.name for s in SUBCORTICAL)

#: The seven subcortical structure kinds, hemisphere dropped (ShapeQC shares left and right).
SUBCORTICAL_KINDS: tuple[str, ...] = tuple(
    s.name.removeprefix("left_") for s in SUBCORTICAL if s.name.startswith("left_")
)

_BY_NAME = {s.name: s for s in STRUCTURES}

#: Codes that identify a FreeSurfer aseg-style segmentation (a subset must be present).
_ASEG_CORE_CODES = frozenset(c for s in SUBCORTICAL for c in s.codes) | {2, 3, 41, 42}

#: Every code FreeSurfer's LUT uses below 1000 for aseg-style maps (plus 1000-2999 and 3000-5002
#: for parcels and wmparc). Used to reject segmentations coded otherwise.
_MAX_ASEG_CODE = 14175


def get_structure(name: str) -> Structure:
    """Return the structure called ``name``.

    Raises
    ------
    ValueError
        If no structure has that name.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"Unknown structure {name!r}; known structures: {', '.join(STRUCTURE_NAMES)}"
        ) from None


def looks_freesurfer_coded(labels: np.ndarray, min_core: int = 6) -> bool:
    """Whether an integer label array is coded with FreeSurfer aseg codes.

    A FreeSurfer-coded segmentation holds several of the core aseg codes (subcortical
    structures, white matter, cortex) and no negative or absurdly large codes. A 3-class
    tissue map (1, 2, 3) or a label map with arbitrary codes does not pass.
    """
    values = np.unique(labels)
    if values.size == 0 or values.min() < 0 or values.max() > _MAX_ASEG_CODE:
        return False
    if not np.allclose(values, np.round(values)):
        return False
    present = _ASEG_CORE_CODES.intersection(int(v) for v in values)
    return len(present) >= min_core
