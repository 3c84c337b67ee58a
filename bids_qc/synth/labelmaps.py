"""Real anatomies for synthesis, with the train/eval guard.

The shared data folder (env ``BIDS_QC_SHARED_DATA``, else ``<repo>/../shared/data``) holds
20 whole-head SynthSeg label maps and 10 ds002748 T1w images. Maps 17-20, ds002748 sub-09
and sub-10, and FreeSurfer's ``bert`` are evaluation-only: asking for them with
``split="train"`` raises ``ValueError``, so no training recipe can see them by mistake.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

Split = Literal["train", "eval"]

#: Label maps a training split may use.
TRAIN_MAPS: range = range(1, 17)
#: Label maps reserved for evaluation, always.
EVAL_MAPS: tuple[int, ...] = (17, 18, 19, 20)
#: ds002748 subjects a training split may use.
TRAIN_SUBJECTS: tuple[str, ...] = tuple(f"{i:02d}" for i in range(1, 9))
#: ds002748 subjects reserved for evaluation.
EVAL_SUBJECTS: tuple[str, ...] = ("09", "10")
#: FreeSurfer volumes of the evaluation-only ``bert`` subject that may be loaded.
BERT_VOLUMES: tuple[str, ...] = (
    "aseg", "norm", "aparc.DKTatlas+aseg", "aparc+aseg", "aseg.presurf", "brain",
)  # fmt: skip


@dataclass(frozen=True)
class LabelMap:
    """A FreeSurfer-coded label map and its grid.

    Attributes
    ----------
    name : str
        Identifier (``training_seg_03``).
    labels : ndarray of int32
        The codes.
    affine : ndarray (4, 4)
        Voxel-to-world matrix (mm).
    path : Path or None
        The file it was read from.
    """

    name: str
    labels: np.ndarray
    affine: np.ndarray
    path: Path | None = None


def shared_data_dir() -> Path:
    """The shared data folder, or ``FileNotFoundError`` naming where it was looked for."""
    env = os.environ.get("BIDS_QC_SHARED_DATA")
    folder = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"shared data folder {folder} is absent; set BIDS_QC_SHARED_DATA to the folder that "
            "holds synthseg_label_maps/, ds002748/ and freesurfer_bert/"
        )
    return folder


def _check_split(split: str) -> None:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")


def check_training_maps(indices: Iterable[int]) -> None:
    """Raise ``ValueError`` if any index is an evaluation map (or not a map at all)."""
    for index in indices:
        check_map_index(int(index), "train")


def check_map_index(index: int, split: Split) -> None:
    """Validate a label-map index for a split (evaluation maps never go to ``train``)."""
    _check_split(split)
    if isinstance(index, bool) or int(index) != index or not 1 <= int(index) <= 20:
        raise ValueError(f"label map index must be an integer in 1..20, got {index!r}")
    if split == "train" and int(index) in EVAL_MAPS:
        raise ValueError(
            f"label map {index} is evaluation-only (maps {EVAL_MAPS} are never used for "
            "training); use split='eval' or one of TRAIN_MAPS"
        )


def label_map_path(index: int) -> Path:
    """Path of ``training_seg_XX.nii.gz`` (no split check: for tools that fit all maps)."""
    path = shared_data_dir() / "synthseg_label_maps" / f"training_seg_{int(index):02d}.nii.gz"
    if not path.is_file():
        raise FileNotFoundError(f"label map {path} is absent from the shared data folder")
    return path


def read_labels(path: str | Path) -> LabelMap:
    """Read any FreeSurfer-coded label volume (NIfTI or MGZ) as int32 codes."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D label volume, got shape {data.shape}")
    labels = np.rint(data).astype(np.int32)
    if not np.array_equal(labels, data):
        raise ValueError(f"{path}: label volume holds non-integer values")
    name = Path(path).name.split(".")[0]
    return LabelMap(name, labels, np.asarray(img.affine, dtype=np.float64), Path(path))


def load_label_map(index: int, split: Split) -> LabelMap:
    """Load SynthSeg label map ``index`` (1-20) for a split.

    Parameters
    ----------
    index : int
        Map number, 1 to 20.
    split : {"train", "eval"}
        What the map is for. ``"train"`` refuses :data:`EVAL_MAPS`; ``"eval"`` takes any map.

    Returns
    -------
    LabelMap
        int32 codes (256^3, 1 mm, LIA) and the affine.

    Raises
    ------
    ValueError
        For an evaluation map in a training split, or a bad index or split.
    FileNotFoundError
        When the shared data folder or the file is absent.
    """
    check_map_index(index, split)
    return read_labels(label_map_path(index))


def iter_label_maps(indices: Iterable[int], split: Split) -> Iterable[LabelMap]:
    """Load several maps, checking every index before reading any."""
    indices = list(indices)
    for index in indices:
        check_map_index(index, split)
    for index in indices:
        yield load_label_map(index, split)


def _subject_id(subject: str | int) -> str:
    text = str(subject).removeprefix("sub-")
    if text.isdigit():
        text = f"{int(text):02d}"
    if text not in TRAIN_SUBJECTS + EVAL_SUBJECTS:
        raise ValueError(
            f"unknown ds002748 subject {subject!r}; "
            f"known: {', '.join(TRAIN_SUBJECTS + EVAL_SUBJECTS)}"
        )
    return text


def load_subject_t1(subject: str | int, split: Split) -> nib.Nifti1Image:
    """Load the skull-stripped ds002748 T1w of ``subject`` (``"03"``, ``"sub-03"`` or 3).

    Raises
    ------
    ValueError
        For sub-09 or sub-10 in a training split, or an unknown subject.
    """
    _check_split(split)
    sub = _subject_id(subject)
    if split == "train" and sub in EVAL_SUBJECTS:
        raise ValueError(
            f"ds002748 sub-{sub} is evaluation-only (sub-{' and sub-'.join(EVAL_SUBJECTS)} are "
            "never used for training); use split='eval'"
        )
    path = shared_data_dir() / "ds002748" / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"
    if not path.is_file():
        raise FileNotFoundError(f"T1w image {path} is absent from the shared data folder")
    return nib.load(str(path))


def load_bert(volume: str, split: Split = "eval") -> nib.spatialimages.SpatialImage:
    """Load ``freesurfer_bert/mri/<volume>.mgz`` (evaluation-only anatomy).

    Raises
    ------
    ValueError
        For a training split or a volume outside :data:`BERT_VOLUMES`.
    """
    _check_split(split)
    if split == "train":
        raise ValueError("FreeSurfer subject bert is evaluation-only; use split='eval'")
    if volume not in BERT_VOLUMES:
        raise ValueError(f"unknown bert volume {volume!r}; known: {', '.join(BERT_VOLUMES)}")
    path = shared_data_dir() / "freesurfer_bert" / "mri" / f"{volume}.mgz"
    if not path.is_file():
        raise FileNotFoundError(f"FreeSurfer volume {path} is absent from the shared data folder")
    return nib.load(str(path))
