"""The real-data evaluation sets: good real images as a BIDS dataset the app runs on.

``python -m bids_qc.training.real_sets --part calibration --out DIR`` lays out every good
real image of one part of ``splits.tsv`` (see :mod:`bids_qc.training.realdata`) as a raw
BIDS dataset with an fMRIPrep-style derivative beside it:

- ``sub-<label>/anat/sub-<label>_T1w.nii.gz``: the real T1w (linked, or converted once);
- ``derivatives/fmriprep/sub-<label>/anat/``: ``desc-preproc_T1w`` (the same image),
  ``desc-aseg_dseg`` (its real segmentation in FreeSurfer codes, where it has one) and
  ``from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.txt``, an affine registration to the
  template made with SimpleITK (:mod:`bids_qc.training.real_register`).

The app then runs on it as a user's dataset would (:mod:`bids_qc.training.real_gate`).
Registrations are cached in ``DIR`` and reused. Exclusions were decided by eye on a mosaic
of every calibration and test image before any model ran on them (``real_exclusions.tsv``,
with the reason); nothing is excluded after seeing a model's output.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np

from .realdata import Part, ixi_people, load_splits, muse_to_freesurfer

#: The template space the real images are registered to (fMRIPrep's default).
SPACE = "MNI152NLin2009cAsym"
#: The registrations the shipped real-data figures were computed with (ITK text affines,
#: ``<label>.txt``), so that anyone rebuilding a set gets the same images.
REGISTRATIONS = Path(str(resources.files("bids_qc.training") / "real_registrations"))


@dataclass(frozen=True)
class RealImage:
    """One good real image.

    Parameters
    ----------
    dataset, item : str
        Its row in ``splits.tsv``.
    t1w : Path
        The image file.
    seg : Path or None
        Its segmentation; ``seg_kind`` says how it is coded.
    seg_kind : {"muse", "freesurfer", "npz", ""}
        ``muse`` (IXI DLMUSE, mapped to FreeSurfer codes), ``freesurfer`` (aseg),
        ``npz`` (voxelmorph's ``seg`` array on the image's grid), ``""`` (none).
    skull_stripped : bool
        Whether the provider removed the skull (such an image registers without a mask).
    """

    dataset: str
    item: str
    t1w: Path
    seg: Path | None = None
    seg_kind: str = ""
    skull_stripped: bool = False

    @property
    def label(self) -> str:
        """BIDS subject label: the dataset's initials and the item, alphanumerics only."""
        prefix = "".join(w[0] for w in self.dataset.split("_"))
        return re.sub(r"[^a-zA-Z0-9]", "", f"{prefix}{self.item}")


#: Images whose header is wrong, with the affine their voxels really have. voxelmorph's test
#: volume is in FreeSurfer's conformed LIA orientation (voxel x to the left, y inferior,
#: z anterior: its aseg puts the left hippocampus at larger x and the brainstem 48 voxels
#: "below" the lateral ventricles along y) but its header says identity (RAS); seen because
#: no affine registration could bring it to the template (correlation 0.18). The fix is
#: FreeSurfer's tkr vox2ras of a conformed volume of its shape.
HEADER_FIXES: dict[tuple[str, str], np.ndarray] = {
    ("voxelmorph_subject", "test_vol"): np.array(
        [[-1.0, 0, 0, 80], [0, 0, 1, -112], [0, -1, 0, 96], [0, 0, 0, 1]]),
}


def load_t1w(image: RealImage) -> nib.spatialimages.SpatialImage:
    """The image as a nibabel image, its header fixed where :data:`HEADER_FIXES` says so."""
    img = nib.load(str(image.t1w))
    fix = HEADER_FIXES.get((image.dataset, image.item))
    if fix is None:
        return img
    return nib.Nifti1Image(np.asanyarray(img.dataobj), fix)


def exclusions() -> dict[tuple[str, str], str]:
    """``(dataset, item) -> reason`` of the images left out by eye (before any model ran)."""
    path = Path(str(resources.files("bids_qc.training") / "real_exclusions.tsv"))
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return {(r["dataset"], r["item"]): r["reason"] for r in rows}


def good_images(data_dir: str | Path, part: Part, exclude: bool = True) -> list[RealImage]:
    """Every good real image of ``part`` (exclusions removed unless ``exclude`` is False),
    in a stable order."""
    data_dir = Path(data_dir)
    splits = load_splits(data_dir)
    images = [RealImage("ixi_dlmuse", p.item, p.t1w, p.dlmuse, "muse")
              for p in ixi_people(data_dir, part, splits)]
    for item in splits.items("freesurfer_bert", part):
        mri = data_dir / "freesurfer_bert" / "mri"
        images.append(RealImage("freesurfer_bert", item, mri / "norm.mgz", mri / "aseg.mgz",
                                "freesurfer"))
    for item in splits.items("voxelmorph_subject", part):
        folder = data_dir / "voxelmorph_subject"
        images.append(RealImage("voxelmorph_subject", item, folder / f"{item}.nii.gz",
                                folder / "test_scan.npz", "npz"))
    for item in splits.items("ds002748", part):
        images.append(RealImage("ds002748", item,
                                data_dir / "ds002748" / item / "anat" / f"{item}_T1w.nii.gz",
                                skull_stripped=True))
    for item in splits.items("scanners", part):
        images.append(RealImage("scanners", item, data_dir / "scanners" / f"{item}.nii.gz"))
    left_out = exclusions() if exclude else {}
    return [im for im in images if (im.dataset, im.item) not in left_out]



def segmentation(image: RealImage) -> tuple[np.ndarray, np.ndarray] | None:
    """The image's segmentation in FreeSurfer codes and its affine (None without one)."""
    if image.seg is None:
        return None
    if image.seg_kind == "npz":
        labels = np.load(image.seg)["seg"]
        return labels.astype(np.int16), load_t1w(image).affine
    seg = nib.load(str(image.seg))
    labels = np.asarray(seg.dataobj).astype(np.int32)
    if image.seg_kind == "muse":
        labels = muse_to_freesurfer(labels)
    return labels.astype(np.int16), seg.affine


def brain_mask(image: RealImage) -> np.ndarray | None:
    """The brain of an image with a segmentation (its labelled voxels), on the image's grid.

    DLMUSE's code 1 (outside the brain, not in its list of ROIs) is left out; an image
    without a segmentation gets None (a skull-stripped image needs no mask).
    """
    if image.seg is None:
        return None
    if image.seg_kind == "npz":
        return np.load(image.seg)["seg"] > 0
    labels = np.asarray(nib.load(str(image.seg)).dataobj)
    return labels > 1 if image.seg_kind == "muse" else labels > 0


def _nifti(src: Path, dst: Path, image: RealImage | None = None) -> None:
    if dst.exists():
        return
    if image is not None and (image.dataset, image.item) in HEADER_FIXES:
        nib.save(load_t1w(image), str(dst))
    elif src.name.endswith(".nii.gz"):
        dst.symlink_to(src.resolve())
    else:  # FreeSurfer .mgz: the app reads NIfTI raw data
        img = nib.load(str(src))
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine), str(dst))


def build_dataset(data_dir: str | Path, part: Part, out: str | Path,
                  log=print, ship: bool = False) -> list[RealImage]:
    """Lay out the good images of ``part`` under ``out`` (see the module docstring).

    Returns the images, in the order of :func:`good_images`. Existing files are kept, so a
    second call only adds what is missing. Registrations come from :data:`REGISTRATIONS`
    when it holds one for the image (the figures then do not depend on SimpleITK's build);
    ``ship`` stores new ones there.
    """
    from ..templates_data import get_template
    from .real_register import register_affine

    out = Path(out)
    template = get_template(SPACE)
    if template is None:
        raise RuntimeError(f"no {SPACE} template is installed")
    images = good_images(data_dir, part)
    (out / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "dataset_description.json").write_text(
        '{"Name": "bids_qc real-data set (' + part + ')", "BIDSVersion": "1.8.0"}\n')
    deriv = out / "derivatives" / "fmriprep"
    deriv.mkdir(parents=True, exist_ok=True)
    (deriv / "dataset_description.json").write_text(
        '{"Name": "real-data derivatives", "BIDSVersion": "1.8.0", "DatasetType": '
        '"derivative", "GeneratedBy": [{"Name": "fMRIPrep"}]}\n')
    for im in images:
        stem = f"sub-{im.label}"
        raw = out / stem / "anat"
        anat = deriv / stem / "anat"
        raw.mkdir(parents=True, exist_ok=True)
        anat.mkdir(parents=True, exist_ok=True)
        _nifti(im.t1w, raw / f"{stem}_T1w.nii.gz", im)
        _nifti(im.t1w, anat / f"{stem}_desc-preproc_T1w.nii.gz", im)
        seg = segmentation(im)
        aseg = anat / f"{stem}_desc-aseg_dseg.nii.gz"
        if seg is not None and not aseg.exists():
            nib.save(nib.Nifti1Image(seg[0], seg[1]), str(aseg))
        xfm = anat / f"{stem}_from-T1w_to-{SPACE}_mode-image_xfm.txt"
        # A whole-head image without a segmentation has no brain to register reliably to
        # the skull-stripped template: it stays raw-only rather than risk a "good" image
        # that is misregistered.
        shipped = REGISTRATIONS / f"{im.label}.txt"
        if not xfm.exists() and shipped.is_file():
            shutil.copyfile(shipped, xfm)
        elif not xfm.exists() and (im.seg is not None or im.skull_stripped):
            reg = register_affine(raw / f"{stem}_T1w.nii.gz", template.t1w, xfm,
                                  brain=brain_mask(im))
            log(f"{im.dataset}/{im.item}: registered (MI {reg.metric:.3f})")
            if ship:
                REGISTRATIONS.mkdir(exist_ok=True)
                shutil.copyfile(xfm, shipped)
    return images


def mosaic(data_dir: str | Path, part: Part, path: str | Path) -> Path:
    """One axial slice of every image of ``part``, exclusions included, for the look by eye
    that decides the exclusions (before any model runs on the images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = good_images(data_dir, part, exclude=False)
    cols = 8
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2, rows * 2.1), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, im in zip(axes.ravel(), images):
        img = nib.as_closest_canonical(load_t1w(im))
        data = np.asanyarray(img.dataobj, dtype=np.float32)
        data = data[..., 0] if data.ndim == 4 else data
        ax.imshow(np.rot90(data[:, :, int(data.shape[2] * 0.55)]), cmap="gray",
                  vmax=float(np.percentile(data, 99.5)))
        ax.set_title(f"{im.dataset}/{im.item}"[:28], fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    """Command line: build one part's dataset."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data", help="the shared data folder")
    p.add_argument("--part", choices=("calibration", "test"), required=True)
    p.add_argument("--out", default=None, help="dataset folder (cached)")
    p.add_argument("--mosaic", default=None,
                   help="only write a PNG mosaic of the part's images (the look by eye)")
    p.add_argument("--ship", action="store_true",
                   help="store new registrations in the package (for the shipped figures)")
    args = p.parse_args(argv)
    if args.mosaic:
        print(mosaic(args.data, args.part, args.mosaic))
        return
    if not args.out:
        p.error("--out is needed to build a dataset")
    images = build_dataset(args.data, args.part, args.out, ship=args.ship)
    print(f"{len(images)} good {args.part} images in {args.out}")


if __name__ == "__main__":
    main()
