"""Dataset-relative outliers: robust z-scores of a metric across the images of a dataset.

``z = 0.6745 * (x - median) / MAD`` (Iglewicz and Hoaglin's modified z-score; 0.6745 makes
it comparable with a standard z-score for normal data) is computed per acquisition group
(images that the entities or sidecars say were acquired alike) when the group holds at least
:data:`MIN_IMAGES` images; images of smaller groups are scored against the whole dataset,
so that splitting a dataset cannot silence its outliers. A dataset of fewer than
:data:`MIN_IMAGES` images gets no z-scores at all, and a group whose MAD is 0 none either;
both add a warning instead. An image is an outlier when ``|z| > OUTLIER_Z``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: The smallest dataset (and acquisition group) that gets robust z-scores of its own.
MIN_IMAGES = 10
#: ``|z|`` above this marks an outlier (Iglewicz and Hoaglin's recommended cut-off).
OUTLIER_Z = 3.5
#: Makes the MAD a consistent estimate of the SD for normal data.
_K = 0.6745


@dataclass
class RobustZ:
    """Robust z-scores of one metric.

    Parameters
    ----------
    z : pd.Series
        The score of each image (NA where no score could be given).
    reference : pd.Series
        Which images each score was computed against: the acquisition group's key, or
        ``"dataset"``.
    warnings : list of str
        Why some or all images have no score.
    median : pd.Series, optional
        The median of the values each score was computed against (NA where no score).
    """

    z: pd.Series
    reference: pd.Series
    warnings: list[str] = field(default_factory=list)
    median: pd.Series | None = None

    def outliers(self) -> pd.Series:
        """1 where ``|z| > OUTLIER_Z``, 0 where not, NA where there is no score."""
        flags = pd.Series(pd.NA, index=self.z.index, dtype="Int64")
        present = self.z.dropna()
        flags.loc[present.index] = (present.abs() > OUTLIER_Z).astype(int)
        return flags


def _score(values: pd.Series) -> tuple[pd.Series | None, float]:
    """The scores of ``values`` (None when their MAD is 0) and their median."""
    median = float(values.median())
    mad = float((values - median).abs().median())
    if mad == 0:
        return None, median
    return _K * (values - median) / mad, median


def robust_z(values: pd.Series, groups: pd.Series | None = None, name: str = "metric",
             min_images: int = MIN_IMAGES) -> RobustZ:
    """Robust z-scores of ``values``, per acquisition group where groups are large enough.

    Parameters
    ----------
    values : pd.Series
        The metric of each image (missing values get no score and count for nothing).
    groups : pd.Series, optional
        The acquisition group key of each image (same index); None: one dataset.
    name : str
        The metric's name, used in warnings.
    min_images : int
        The smallest group (and dataset) scored on its own.
    """
    values = pd.to_numeric(values, errors="coerce").astype(float)
    z = pd.Series(np.nan, index=values.index, dtype=float)
    centre = pd.Series(np.nan, index=values.index, dtype=float)
    reference = pd.Series(pd.NA, index=values.index, dtype="object")
    warnings: list[str] = []
    present = values.dropna()
    if len(present) < min_images:
        if len(present):  # a metric no image has (a model that did not run) says nothing
            warnings.append(f"{name}: only {len(present)} image(s) have a value; "
                            f"dataset-relative outliers need at least {min_images}")
        return RobustZ(z, reference, warnings, centre)
    keys = (pd.Series("dataset", index=values.index) if groups is None
            else groups.reindex(values.index).astype("object").fillna("unknown").astype(str))
    rest = []
    for key, members in present.groupby(keys.loc[present.index]):
        if groups is None or len(members) < min_images:
            rest.append(members)
            continue
        scores, median = _score(members)
        if scores is None:
            warnings.append(f"{name}: every image of acquisition group {key} has the same "
                            "median distance (MAD 0); those images get no score")
            continue
        z.loc[members.index] = scores
        centre.loc[members.index] = median
        reference.loc[members.index] = key
    if rest:
        # small groups are scored against the whole dataset, not left unscored
        scores, median = _score(present)
        small = pd.concat(rest).index
        if scores is None:
            warnings.append(f"{name}: MAD 0 across the dataset; "
                            f"{len(small)} image(s) get no score")
        else:
            z.loc[small] = scores.loc[small]
            centre.loc[small] = median
            reference.loc[small] = "dataset"
    return RobustZ(z, reference, warnings, centre)


def icv_scaled(volumes: pd.Series, icv: pd.Series) -> pd.Series:
    """Volumes divided by each image's intracranial volume (NA where either is missing or
    the ICV is not positive)."""
    volumes = pd.to_numeric(volumes, errors="coerce").astype(float)
    icv = pd.to_numeric(icv, errors="coerce").astype(float).reindex(volumes.index)
    return volumes / icv.where(icv > 0)


def intracranial_volume(etiv: pd.Series, whole_brain: pd.Series) -> pd.Series:
    """Each image's intracranial volume for scaling: eTIV where present, else the
    segmentation's whole-brain volume brought to eTIV's scale.

    ``vol_whole_brain`` (every labelled voxel) is about 80% of eTIV, so dividing some
    images by one and others by the other would set them apart by that ratio alone; the
    fallback is ``vol_whole_brain x median(eTIV / vol_whole_brain)`` over the images that
    have both (x 1 when none has). Without any eTIV this is ``vol_whole_brain`` itself.

    Parameters
    ----------
    etiv : pd.Series
        ``etiv_mm3`` of each image (NA: no FreeSurfer stats).
    whole_brain : pd.Series
        ``vol_whole_brain`` of each image (same index).

    Returns
    -------
    pd.Series
        The intracranial volume (mm^3) of each image, NA where neither is known.
    """
    etiv = pd.to_numeric(etiv, errors="coerce").astype(float)
    etiv = etiv.where(etiv > 0)
    brain = pd.to_numeric(whole_brain, errors="coerce").astype(float).reindex(etiv.index)
    brain = brain.where(brain > 0)
    both = etiv.notna() & brain.notna()
    factor = float((etiv[both] / brain[both]).median()) if both.any() else 1.0
    return etiv.fillna(brain * factor)


def acquisition_groups(frame: pd.DataFrame, keys: tuple[str, ...] = (
        "acquisition", "run", "Manufacturer", "MagneticFieldStrength")) -> pd.Series | None:
    """One key per image from the columns of ``frame`` that distinguish acquisitions
    (None when no such column varies)."""
    present = [k for k in keys if k in frame.columns and frame[k].nunique(dropna=False) > 1]
    if not present:
        return None
    parts = frame[present].astype("object").where(frame[present].notna(), "n/a").astype(str)
    return parts.apply(lambda r: ",".join(f"{k}={v}" for k, v in zip(present, r)), axis=1)
