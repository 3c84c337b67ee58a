"""Build tiny fake BIDS datasets and derivatives for tests.

Every builder writes real (tiny) images with nibabel, so code that loads them works:
NIfTI for BIDS files, MGZ for FreeSurfer/FastSurfer. Images default to 8x8x8 arrays
with a 1 mm identity-like affine; pass ``data``/``affine`` (or a dict of arrays per
role) to write your own.

Layout written (``root`` is the BIDS root)::

    root/dataset_description.json
    root/sub-01[/ses-A]/anat/sub-01[_ses-A][_acq-X][_run-N]_T1w.nii.gz (+ .json)
    root/derivatives/fmriprep/sub-01[/ses-A]/anat/sub-01[_ses-A]_desc-preproc_T1w.nii.gz ...
    root/derivatives/freesurfer/sub-01[_ses-A]/mri/{orig,T1,norm,aseg}.mgz ...
    root/derivatives/fastsurfer/sub-01[_ses-A]/mri/{orig,aparc.DKTatlas+aseg.deep}.mgz ...

Example
-------
>>> root = make_raw(tmp_path / "ds", ["01", "02"], sessions=["A"])   # doctest: +SKIP
>>> add_fmriprep(root, ["01"], sessions=["A"])                        # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

SHAPE = (8, 8, 8)
#: 1 mm voxels, centred near the origin (RAS).
AFFINE = np.array([[1.0, 0, 0, -4], [0, 1.0, 0, -4], [0, 0, 1.0, -4], [0, 0, 0, 1]])
#: FreeSurfer codes written by :func:`tiny_aseg` (WM, cortex, ventricles, thalamus,
#: caudate, putamen, pallidum, hippocampus, amygdala, accumbens, both hemispheres).
ASEG_CODES = (2, 3, 4, 10, 11, 12, 13, 17, 18, 26, 41, 42, 43, 49, 50, 51, 52, 53, 54, 58)


def tiny_t1w(shape: Sequence[int] = SHAPE, seed: int = 0) -> np.ndarray:
    """A float32 "head": a bright ball in noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.asarray(shape, dtype=np.float32) - 1) / 2
    radius = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(axis=0))
    ball = np.where(radius < min(shape) / 3, 100.0, 10.0)
    return (ball + rng.normal(0, 1, size=tuple(shape))).astype(np.float32)


def tiny_mask(shape: Sequence[int] = SHAPE) -> np.ndarray:
    """A uint8 brain mask (the ball of :func:`tiny_t1w`)."""
    return (tiny_t1w(shape) > 50).astype(np.uint8)


def tiny_aseg(shape: Sequence[int] = SHAPE) -> np.ndarray:
    """An int32 FreeSurfer-coded label map: every code of :data:`ASEG_CODES` in the ball."""
    mask = tiny_mask(shape).astype(bool)
    labels = np.zeros(tuple(shape), dtype=np.int32)
    labels[mask] = np.resize(np.asarray(ASEG_CODES, dtype=np.int32), int(mask.sum()))
    return labels


def tiny_tissue(shape: Sequence[int] = SHAPE) -> np.ndarray:
    """An int16 3-class map (1 CSF, 2 GM, 3 WM), like fMRIPrep's bare ``dseg``."""
    mask = tiny_mask(shape).astype(bool)
    labels = np.zeros(tuple(shape), dtype=np.int16)
    labels[mask] = np.resize(np.array([1, 2, 3], dtype=np.int16), int(mask.sum()))
    return labels


def write_image(path: Path, data: np.ndarray | None = None,
                affine: np.ndarray | None = None) -> Path:
    """Write ``data`` as NIfTI (``.nii``/``.nii.gz``) or MGZ (``.mgz``), by extension.

    Parameters
    ----------
    path : Path
        Where to write; parent folders are created.
    data : ndarray, optional
        The voxels (default :func:`tiny_t1w`). MGZ keeps uint8/int16/int32/float32 only.
    affine : ndarray, optional
        Voxel to world (RAS) matrix (default :data:`AFFINE`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = tiny_t1w() if data is None else np.asarray(data)
    affine = AFFINE if affine is None else np.asarray(affine, dtype=float)
    if path.name.endswith(".mgz"):
        if data.dtype not in (np.uint8, np.int16, np.int32, np.float32):
            data = data.astype(np.int32 if np.issubdtype(data.dtype, np.integer) else np.float32)
        nib.save(nib.MGHImage(data, affine), str(path))
    else:
        image = nib.Nifti1Image(data, affine)
        image.header.set_xyzt_units("mm")
        nib.save(image, str(path))
    return path


def write_json(path: Path, content: Any) -> Path:
    """Write ``content`` as JSON (a ``str`` is written verbatim, e.g. to make bad JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return path


def write_description(root: Path, name: str = "fake dataset",
                      generated_by: str | None = None) -> Path:
    """Write ``dataset_description.json``; ``generated_by`` makes it a derivative."""
    content: dict[str, Any] = {"Name": name, "BIDSVersion": "1.9.0"}
    if generated_by is not None:
        content["DatasetType"] = "derivative"
        content["GeneratedBy"] = [{"Name": generated_by, "Version": "0.0.0"}]
    return write_json(Path(root) / "dataset_description.json", content)


def annex(path: Path) -> Path:
    """Replace a file by a dangling symlink, as git-annex leaves content not fetched."""
    path = Path(path)
    target = Path(".git/annex/objects/XX/YY") / f"MD5E-s1--{path.name}" / path.name
    if path.exists() or path.is_symlink():
        path.unlink()
    os.symlink(target, path)  # relative and dangling, like an annexed file
    return path


def _stem(subject: str, session: str | None, **entities: Any) -> str:
    """``sub-01_ses-A_acq-x_run-1`` from labels; None values are left out."""
    parts = [f"sub-{subject}"] + ([f"ses-{session}"] if session else [])
    parts += [f"{k}-{v}" for k, v in entities.items() if v is not None]
    return "_".join(parts)


def _folder(root: Path, subject: str, session: str | None) -> Path:
    return Path(root) / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"


def make_raw(root: Path, subjects: Iterable[str], sessions: Iterable[str] | None = None,
             runs: Iterable[int | str] | None = None, acq: str | None = None, *,
             rec: str | None = None, ce: str | None = None, data: np.ndarray | None = None,
             affine: np.ndarray | None = None, sidecar: Mapping[str, Any] | None = None,
             description: bool = True, extension: str = ".nii.gz") -> Path:
    """Write a raw BIDS dataset of T1w images and return its root.

    Parameters
    ----------
    root : Path
        The dataset root (created).
    subjects, sessions, runs : iterables of labels, optional
        One image per subject x session x run (labels without prefixes).
    acq, rec, ce : str, optional
        ``acq-``/``rec-``/``ce-`` entity of every image.
    data, affine : ndarray, optional
        The image to write (default :func:`tiny_t1w` and :data:`AFFINE`).
    sidecar : mapping, optional
        JSON sidecar beside each image (default a small one; ``{}`` writes none).
    description : bool
        Write ``dataset_description.json``.
    extension : str
        ``.nii.gz`` or ``.nii``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if description and not (root / "dataset_description.json").exists():
        write_description(root)
    sidecar = {"MagneticFieldStrength": 3, "RepetitionTime": 2.3} if sidecar is None else sidecar
    for subject in subjects:
        for session in list(sessions or [None]):
            for run in list(runs or [None]):
                stem = _stem(subject, session, acq=acq, ce=ce, rec=rec, run=run)
                folder = _folder(root, subject, session)
                write_image(folder / f"{stem}_T1w{extension}", data, affine)
                if sidecar:
                    write_json(folder / f"{stem}_T1w.json", dict(sidecar))
    return root


#: The fMRIPrep outputs :func:`add_fmriprep` can write, by role.
FMRIPREP_ROLES = ("preproc", "template", "mask", "aseg", "dseg", "xfm")


def add_fmriprep(root: Path, subjects: Iterable[str], sessions: Iterable[str] | None = None,
                 *, name: str = "fmriprep", generated_by: str | None = "fMRIPrep",
                 roles: Iterable[str] = FMRIPREP_ROLES,
                 spaces: Sequence[str] = ("MNI152NLin2009cAsym",),
                 xfm_ext: str = ".h5", entities: Mapping[str, Any] | None = None,
                 arrays: Mapping[str, np.ndarray] | None = None,
                 affine: np.ndarray | None = None) -> Path:
    """Write fMRIPrep-style anatomical outputs under ``root/derivatives/<name>``.

    Parameters
    ----------
    root : Path
        The BIDS root (the derivative goes in ``derivatives/<name>``; an absolute
        ``name`` is used as the derivative folder itself).
    subjects, sessions : iterables of labels
        One set of outputs per subject x session (no sessions: ``sub-X/anat``).
    name : str
        Folder name of the derivative dataset.
    generated_by : str or None
        ``GeneratedBy[0].Name`` of its ``dataset_description.json`` (None: no file).
    roles : iterable of str
        Which of :data:`FMRIPREP_ROLES` to write: ``preproc`` (``desc-preproc_T1w``),
        ``template`` (``space-<tpl>_desc-preproc_T1w`` for each of ``spaces``),
        ``mask`` (``desc-brain_mask``), ``aseg`` (``desc-aseg_dseg``), ``dseg`` (bare
        tissue ``dseg``), ``xfm`` (``from-T1w_to-<tpl>_mode-image_xfm``, per space).
    spaces : sequence of str
        Template spaces (a ``res-`` part may be added: ``"MNI152NLin6Asym_res-2"``).
    xfm_ext : str
        ``.h5`` (a placeholder file, not real HDF5), ``.txt`` (an ITK identity affine)
        or ``.mat``.
    entities : mapping, optional
        Extra entities of every file (``{"run": 1}``, ``{"acq": "mprage"}``).
    arrays : mapping, optional
        Role -> array to write instead of the tiny default.
    affine : ndarray, optional
        Affine of every image.

    Returns
    -------
    Path
        The derivative dataset's folder.
    """
    deriv = Path(root) / "derivatives" / name
    deriv.mkdir(parents=True, exist_ok=True)
    if generated_by is not None:
        write_description(deriv, name=f"{generated_by} outputs", generated_by=generated_by)
    roles, arrays, extra = set(roles), dict(arrays or {}), dict(entities or {})
    defaults = {"preproc": tiny_t1w, "template": tiny_t1w, "mask": tiny_mask,
                "aseg": tiny_aseg, "dseg": tiny_tissue}
    for subject in subjects:
        for session in list(sessions or [None]):
            folder = _folder(deriv, subject, session)
            stem = _stem(subject, session, **extra)
            images = {"preproc": [f"{stem}_desc-preproc_T1w"],
                      "template": [f"{stem}_space-{s}_desc-preproc_T1w" for s in spaces],
                      "mask": [f"{stem}_desc-brain_mask"],
                      "aseg": [f"{stem}_desc-aseg_dseg"],
                      "dseg": [f"{stem}_dseg"]}
            for role, names in images.items():
                if role in roles:
                    for file_name in names:
                        data = arrays.get(role, defaults[role]())
                        write_image(folder / f"{file_name}.nii.gz", data, affine)
            if "xfm" in roles:
                for space in spaces:
                    tpl = space.split("_")[0]
                    path = folder / f"{stem}_from-T1w_to-{tpl}_mode-image_xfm{xfm_ext}"
                    if xfm_ext == ".h5":
                        path.write_bytes(b"placeholder: not an HDF5 file")
                    else:
                        write_itk_affine(path)
    return deriv


def write_itk_affine(path: Path, matrix: np.ndarray | None = None) -> Path:
    """Write an ITK affine text transform (``#Insight Transform File V1.0``)."""
    matrix = np.eye(4) if matrix is None else np.asarray(matrix, dtype=float)
    params = " ".join(f"{v:g}" for v in [*matrix[:3, :3].ravel(), *matrix[:3, 3]])
    text = ("#Insight Transform File V1.0\n#Transform 0\n"
            "Transform: AffineTransform_double_3_3\n"
            f"Parameters: {params}\nFixedParameters: 0 0 0\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_talairach(path: Path, matrix: np.ndarray | None = None) -> Path:
    """Write a FreeSurfer/MNI ``talairach.xfm`` (linear, 3x4 rows of ``matrix``).

    ``matrix`` maps native RAS to MNI305, as FreeSurfer's does; the default is the
    transform of an image already in MNI152 space (FreeSurfer's MNI152 -> MNI305 affine),
    so the app's composition brings it back exactly.
    """
    from bids_qc.transforms import FS_MNI152_TO_MNI305

    matrix = FS_MNI152_TO_MNI305 if matrix is None else np.asarray(matrix, dtype=float)
    rows = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in matrix[:3])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("MNI Transform File\n% avi2talxfm\n\nTransform_Type = Linear;\n"
                    f"Linear_Transform =\n{rows};\n")
    return path


def _subject_folder(root: Path, under: str | Path, subject: str, session: str | None) -> Path:
    name = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    return Path(root) / "derivatives" / under / name


def add_freesurfer(root: Path, subject: str, session: str | None = None,
                   under: str | Path = "freesurfer", with_aseg: bool = True, *,
                   volumes: Iterable[str] = ("orig", "T1", "norm", "aparc+aseg"),
                   talairach: str | None = "transforms",
                   arrays: Mapping[str, np.ndarray] | None = None,
                   affine: np.ndarray | None = None, etiv: float | None = None) -> Path:
    """Write a FreeSurfer subject folder ``sub-X[_ses-Y]/mri/`` and return it.

    Parameters
    ----------
    root : Path
        The BIDS root; the folder goes in ``derivatives/<under>/`` (``under`` may be
        ``"fmriprep/sourcedata/freesurfer"``, or absolute).
    subject, session : str
        Labels without prefixes.
    with_aseg : bool
        Write ``mri/aseg.mgz``.
    volumes : iterable of str
        Other ``mri/<name>.mgz`` to write (``aparc+aseg`` gets labels, the rest a head).
    talairach : {"transforms", "mri"} or None
        Write ``mri/transforms/talairach.xfm`` or ``mri/talairach.xfm``, or none.
    arrays : mapping, optional
        Volume name (``norm``, ``aseg``, ...) -> array to write instead of the default.
    affine : ndarray, optional
        Affine of every volume.
    etiv : float, optional
        Write ``stats/aseg.stats`` with this eTIV (:func:`write_aseg_stats`).
    """
    folder = _subject_folder(root, under, subject, session)
    if etiv is not None:
        write_aseg_stats(folder / "stats" / "aseg.stats", etiv)
    arrays = dict(arrays or {})
    names = list(volumes) + (["aseg"] if with_aseg else [])
    for name in names:
        default = tiny_aseg() if "aseg" in name else tiny_t1w()
        write_image(folder / "mri" / f"{name}.mgz", arrays.get(name, default), affine)
    if talairach is not None:
        where = folder / "mri" / ("transforms" if talairach == "transforms" else "")
        write_talairach(where / "talairach.xfm")
    return folder


def write_aseg_stats(path: Path, etiv: float | None) -> Path:
    """A FreeSurfer 7 ``aseg.stats`` head (``# Measure`` lines, one structure row); without
    an eTIV line when ``etiv`` is None (``mri_segstats`` run without ``--etiv``)."""
    lines = [
        "# Title Segmentation Statistics ",
        "# generating_program mri_segstats",
        "# Measure BrainSeg, BrainSegVol, Brain Segmentation Volume, 1218061.000000, mm^3",
        "# Measure Mask, MaskVol, Mask Volume, 1780580.000000, mm^3",
    ]
    if etiv is not None:
        lines.append("# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total "
                     f"Intracranial Volume, {etiv:.6f}, mm^3")
    lines += ["# ColHeaders  Index SegId NVoxels Volume_mm3 StructName",
              "  1   4     7463     7463.0  Left-Lateral-Ventricle"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def add_fastsurfer(root: Path, subject: str, session: str | None = None,
                   under: str | Path = "fastsurfer", deep: bool = True, *,
                   talairach: str | None = None,
                   arrays: Mapping[str, np.ndarray] | None = None,
                   affine: np.ndarray | None = None) -> Path:
    """Write a FastSurfer subject folder and return it.

    ``deep=True`` writes ``mri/aparc.DKTatlas+aseg.deep.mgz`` (the segmentation
    module's output); ``deep=False`` writes only ``mri/aseg.auto_noCCseg.mgz``. Both
    write ``mri/orig.mgz``. ``talairach`` as in :func:`add_freesurfer` (FastSurfer's
    surface module writes ``mri/transforms/talairach.xfm``).
    """
    folder = _subject_folder(root, under, subject, session)
    arrays = dict(arrays or {})
    seg = "aparc.DKTatlas+aseg.deep" if deep else "aseg.auto_noCCseg"
    write_image(folder / "mri" / "orig.mgz", arrays.get("orig", tiny_t1w()), affine)
    write_image(folder / "mri" / f"{seg}.mgz", arrays.get(seg, tiny_aseg()), affine)
    if talairach is not None:
        where = folder / "mri" / ("transforms" if talairach == "transforms" else "")
        write_talairach(where / "talairach.xfm")
    return folder
