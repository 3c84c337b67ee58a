"""The image quality metrics (IQMs): names, units, what each measures and how it reads.

Names and units are MRIQC's (``mriqc.qc.anatomical``; Esteban et al. 2017, PLoS ONE
12(9):e0184661, and MRIQC's documentation "IQMs for structural images"), so that scripts
and classifiers written for MRIQC's ``group_T1w.tsv`` read these columns unchanged. This
module imports nothing heavy: the output schema and ``--help`` read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: How a value reads: ``higher``/``lower`` is better, ``closer to 1`` is better, or ``none``
#: (a descriptive statistic with no better side).
Better = Literal["higher", "lower", "closer to 1", "none"]

TISSUES: tuple[str, ...] = ("csf", "gm", "wm")
#: Summary statistics per tissue (and the background), MRIQC's suffixes.
SUMMARY_STATS: tuple[str, ...] = ("mean", "median", "stdv", "k", "mad", "p05", "p95", "n")


@dataclass(frozen=True)
class IQM:
    """One image quality metric.

    Parameters
    ----------
    name : str
        MRIQC's column name.
    unit : str
        Its unit ("" when dimensionless; ``a.u.`` for image intensity units).
    better : {"higher", "lower", "closer to 1", "none"}
        Which values mean a better image.
    description : str
        What it measures (one or two sentences, for the schema and the report).
    background : bool
        Whether it needs the air around the head (n/a on skull-stripped or defaced
        images, see :func:`bids_qc.iqms.masks.background_problem`).
    group : str
        The report's grouping (``noise``, ``contrast``, ``artefacts``, ``inu``, ``smoothness``,
        ``tissues``, ``summary``).
    descriptive : bool
        A descriptive statistic (the ``summary_*``: scanner intensity units or voxel
        counts, inputs of the other IQMs rather than quality measures): the group level
        gives it no robust z-score (``rz_*``) and no plot.
    """

    name: str
    unit: str
    better: Better
    description: str
    background: bool = False
    group: str = ""
    descriptive: bool = False

    @property
    def reads(self) -> str:
        """The direction in words, for descriptions (``Higher is better.``)."""
        if self.better == "none":
            return "Descriptive (no better side)."
        return f"{self.better.capitalize()} is better."


_TISSUE_WORDS = {"csf": "cerebrospinal fluid", "gm": "grey matter", "wm": "white matter",
                 "bg": "background (air)"}


def _snr() -> list[IQM]:
    out = [IQM(f"snr_{t}", "", "higher", f"Signal-to-noise ratio of the {_TISSUE_WORDS[t]}: "
               "median / (standard deviation x sqrt(n / (n - 1))) of the tissue (n its "
               "partial-volume sum), on the INU-corrected image.", group="noise") for t in TISSUES]
    out.append(IQM("snr_total", "", "higher", "Mean of snr_csf, snr_gm and snr_wm.",
                   group="noise"))
    out += [IQM(f"snrd_{t}", "", "higher", f"Dietrich's SNR of the {_TISSUE_WORDS[t]}: "
                "sqrt((4 - pi) / 2) x tissue median / the air's standard deviation, which "
                "corrects for the Rayleigh distribution of magnitude noise.",
                background=True, group="noise") for t in TISSUES]
    out.append(IQM("snrd_total", "", "higher", "Mean of snrd_csf, snrd_gm and snrd_wm.",
                   background=True, group="noise"))
    return out


def _summary() -> list[IQM]:
    words = {
        "mean": ("a.u.", "mean intensity"),
        "median": ("a.u.", "median intensity"),
        "stdv": ("a.u.", "standard deviation of the intensities"),
        "k": ("", "excess kurtosis (Fisher) of the intensities"),
        "mad": ("a.u.", "median absolute deviation x 1.4826 (the SD for normal data)"),
        "p05": ("a.u.", "5th percentile of the intensities"),
        "p95": ("a.u.", "95th percentile of the intensities"),
        "n": ("voxels", "number of voxels (partial-volume sum for tissues)"),
    }
    out = []
    for region in ("bg",) + TISSUES:
        where = ("the background (air around the head, raw image)" if region == "bg" else
                 f"the {_TISSUE_WORDS[region]} (INU-corrected image; weighted by its "
                 "partial-volume map, kurtosis and MAD over voxels above half its maximum, "
                 "as MRIQC)")
        for stat in SUMMARY_STATS:
            unit, what = words[stat]
            out.append(IQM(f"summary_{region}_{stat}", unit, "none", f"{what.capitalize()} "
                           f"of {where}.", background=region == "bg", group="summary",
                           descriptive=True))
    return out


def _build() -> tuple[IQM, ...]:
    iqms = [
        IQM("cjv", "", "lower", "Coefficient of joint variation of white and grey matter: "
            "(MAD_wm + MAD_gm) / |median_wm - median_gm| (Ganzetti et al. 2016; MRIQC's "
            "workflow passes medians and MADs); grows with "
            "noise, intensity non-uniformity and head motion.", group="contrast"),
        IQM("cnr", "", "higher", "Contrast-to-noise ratio: |median_gm - median_wm| / "
            "sqrt(stdv_gm^2 + stdv_wm^2 + stdv_air^2), how well grey and white matter "
            "separate (the air term is 0 where the background is unusable).",
            group="contrast"),
        *_snr(),
        IQM("efc", "", "lower", "Entropy focus criterion (Atkinson et al. 1997): the Shannon "
            "entropy of the voxel intensities, normalised by its maximum; ghosting and "
            "motion blur spread the energy and raise it.", background=True,
            group="artefacts"),
        IQM("fber", "", "higher", "Foreground-background energy ratio: mean of |I|^2 in the "
            "head / mean of |I|^2 in the air (Shehzad et al. 2015).", background=True,
            group="artefacts"),
        IQM("wm2max", "", "closer to 1", "White-matter to maximum intensity ratio: WM median / "
            "99.95th percentile of the whole image (raw); low values mean long bright tails "
            "(fat, carotid vessels). MRIQC suggests [0.6, 0.8] as typical.", background=True,
            group="contrast"),
        IQM("qi_1", "", "lower", "Mortamet's QI1: the share of air voxels (farther than 10 mm "
            "from the head) that hold artefacts (robust z > 10, kept after a binary "
            "opening): ghosts, wrap-around, motion streaks.", background=True,
            group="artefacts"),
        IQM("qi_2", "", "lower", "Mortamet's QI2: how badly a chi distribution (the noise "
            "of a magnitude image) fits the air's intensities, as the mean absolute "
            "difference of the densities in the upper tail.", background=True,
            group="artefacts"),
        IQM("inu_med", "", "closer to 1", "Median of the intensity non-uniformity (bias) "
            "field in the brain, estimated by N4 (SimpleITK) and scaled to a geometric mean "
            "of 1 there (so close to 1 by construction; it shows the field's skew).",
            group="inu"),
        IQM("inu_range", "", "lower", "Spread of the bias field in the brain: its 95th "
            "minus 5th percentile (field scaled to a geometric mean of 1); large values "
            "mean strong intensity non-uniformity.", group="inu"),
        *[IQM(f"fwhm_{a}", "voxels", "lower", f"Smoothness along {a} (image axis "
              f"{i}): full width at half maximum of a Gaussian with the same lag-1 "
              "autocorrelation inside the brain (Forman et al. 1995; AFNI 3dFWHMx's "
              "classic estimate), in voxels.", group="smoothness")
          for i, a in enumerate("xyz")],
        IQM("fwhm_avg", "voxels", "lower", "Mean of fwhm_x, fwhm_y and fwhm_z.",
            group="smoothness"),
        *[IQM(f"icvs_{t}", "", "none", f"Intracranial volume fraction of the "
              f"{_TISSUE_WORDS[t]}: its partial-volume sum / that of the three tissues.",
              group="tissues") for t in TISSUES],
        *[IQM(f"rpve_{t}", "", "lower", f"Residual partial-volume effect of the "
              f"{_TISSUE_WORDS[t]}: the share of its partial-volume sum in voxels whose "
              "posterior lies in [0.05, 0.95].", group="tissues") for t in TISSUES],
        *[IQM(f"tpm_overlap_{t}", "", "higher", f"Fuzzy Jaccard overlap of the "
              f"{_TISSUE_WORDS[t]} map in template space with the template's tissue "
              "probability map; n/a without a template-space image or without the "
              "template's map.", group="tissues") for t in TISSUES],
        *_summary(),
    ]
    return tuple(iqms)


#: Every IQM, in column order.
IQMS: tuple[IQM, ...] = _build()
IQM_NAMES: tuple[str, ...] = tuple(q.name for q in IQMS)
#: The IQMs that need the air around the head.
BACKGROUND_IQMS: tuple[str, ...] = tuple(q.name for q in IQMS if q.background)
_BY_NAME = {q.name: q for q in IQMS}

#: The report's groups, in order, with a heading.
GROUPS: tuple[tuple[str, str], ...] = (
    ("noise", "Noise"),
    ("contrast", "Contrast"),
    ("artefacts", "Artefacts in the air"),
    ("inu", "Intensity non-uniformity"),
    ("smoothness", "Smoothness"),
    ("tissues", "Tissues"),
    ("summary", "Summary statistics"),
)


def get_iqm(name: str) -> IQM:
    """The IQM called ``name``; ValueError if there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"{name!r} is not an image quality metric") from None
