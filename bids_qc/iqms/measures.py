"""The IQM formulas: plain functions of intensities, masks and partial-volume maps.

Each follows MRIQC's published definition (``mriqc.qc.anatomical`` documentation;
Esteban et al. 2017); where the procedure differs, the docstring says how. The functions
take 1-D arrays where they can (the voxels of one region), so that callers pick the
regions once.
"""

from __future__ import annotations

import math

import numpy as np

#: sqrt((4 - pi) / 2): the SD of a Rayleigh distribution over its sigma; Dietrich et al.
#: (2007) divide the air's SD by it to get the noise sigma of a magnitude image.
DIETRICH_FACTOR = math.sqrt((4.0 - math.pi) / 2.0)
#: Makes the median absolute deviation a consistent estimate of the SD for normal data.
MAD_TO_SD = 1.4826


def _ratio(num: float, den: float) -> float | None:
    """``num / den``, or None where the denominator is not a positive finite number."""
    if not (np.isfinite(num) and np.isfinite(den)) or den <= 0:
        return None
    return float(num / den)


def mad(values: np.ndarray, center: float | None = None) -> float:
    """Normalised median absolute deviation (x 1.4826: the SD for normal data)."""
    values = np.asarray(values)
    if values.size == 0:
        return float("nan")
    c = float(np.median(values)) if center is None else center
    dev = np.abs(values - np.asarray(c, dtype=values.dtype))  # in the values' own precision
    return float(MAD_TO_SD * np.median(dev))


def snr(mu: float, sigma: float, n: float) -> float | None:
    """Signal-to-noise ratio of one tissue: ``mu / (sigma * sqrt(n / (n - 1)))``.

    Parameters
    ----------
    mu, sigma : float
        The tissue's median and standard deviation.
    n : float
        Its number of voxels.

    Returns
    -------
    float or None
        Dimensionless; higher is better. None for fewer than 2 voxels or sigma 0.
    """
    if n < 2:
        return None
    return _ratio(mu, sigma * math.sqrt(n / (n - 1.0)))


def snr_dietrich(mu: float, sigma_air: float) -> float | None:
    """Dietrich's SNR: ``sqrt((4 - pi) / 2) * mu / sigma_air``.

    Parameters
    ----------
    mu : float
        The tissue's median.
    sigma_air : float
        The air's standard deviation, as in Dietrich et al. (2007). MRIQC takes the air's
        MAD where it exceeds 1 and the SD otherwise; in quantised images, whose air is
        mostly exact zeros, the MAD is 0 or a step of the quantisation and switches to the
        SD with the slightest change (on real IXI images, a faint ghost raised that SNR
        sevenfold), so bids_qc always takes the SD, which artefacts in the air also raise.

    Returns
    -------
    float or None
        Dimensionless; higher is better. None without a positive noise level.
    """
    return _ratio(DIETRICH_FACTOR * mu, sigma_air)


def cnr(mu_wm: float, mu_gm: float, sigma_wm: float, sigma_gm: float,
        sigma_air: float = 0.0) -> float | None:
    """Contrast-to-noise ratio: ``|mu_gm - mu_wm| / sqrt(s_air^2 + s_gm^2 + s_wm^2)``.

    Dimensionless; higher is better. ``sigma_air`` is 0 where the background is unusable
    (what MRIQC's formula gives on a zero background).
    """
    return _ratio(abs(mu_gm - mu_wm), math.sqrt(sigma_air**2 + sigma_gm**2 + sigma_wm**2))


def cjv(mu_wm: float, mu_gm: float, sigma_wm: float, sigma_gm: float) -> float | None:
    """Coefficient of joint variation: ``(sigma_wm + sigma_gm) / |mu_wm - mu_gm|``.

    MRIQC passes the medians and MADs of the two tissues (Ganzetti et al. 2016).
    Dimensionless; lower is better.
    """
    return _ratio(sigma_wm + sigma_gm, abs(mu_wm - mu_gm))


def efc(values: np.ndarray) -> float | None:
    """Entropy focus criterion (Atkinson et al. 1997), normalised to its maximum.

    ``EFC = sum(x / b * ln(x / b)) / (N / sqrt(N) * ln(1 / sqrt(N)))`` over the ``N``
    voxels of the field of view, with ``b = sqrt(sum(x^2))`` the image energy. The
    maximum (the denominator) is the entropy of an image whose voxels are all equal.

    Parameters
    ----------
    values : ndarray
        Non-negative intensities of every voxel of the field of view (frame excluded).

    Returns
    -------
    float or None
        In [0, 1]; lower is better (ghosting and blur spread the energy).
    """
    x = np.asarray(values, dtype=np.float32).ravel()
    n = x.size
    energy = math.sqrt(float(np.dot(x.astype(np.float64), x)))
    if n < 2 or energy <= 0:
        return None
    efc_max = n * (1.0 / math.sqrt(n)) * math.log(1.0 / math.sqrt(n))
    # float32 terms, float64 sum: 10^7 voxels, and the terms need no more precision
    y = x / np.float32(energy)
    entropy = float(np.sum(y * np.log(y + np.float32(1e-30)), dtype=np.float64))
    return entropy / efc_max


def fber(head: np.ndarray, air: np.ndarray) -> float | None:
    """Foreground-background energy ratio: ``mean(|head|^2) / mean(|air|^2)``.

    MRIQC's documentation defines it with the mean energies (Shehzad et al. 2015); its
    code takes medians, which are 0 in quantised images whose air is mostly exact zeros
    (the ratio is then undefined on every such image: IXI's). bids_qc follows the
    documentation. Dimensionless; higher is better. None where the air holds no energy
    (a zero-filled background; MRIQC returns -1 there).
    """
    if head.size == 0 or air.size == 0:
        return None
    fg = float(np.dot(head.astype(np.float64), head)) / head.size
    bg = float(np.dot(air.astype(np.float64), air)) / air.size
    return _ratio(fg, bg)


def wm2max(mu_wm: float, image: np.ndarray) -> float | None:
    """``mu_wm / P99.95(image)``: the WM median over the 99.95th percentile of every voxel.

    Dimensionless; values near 1 are better (MRIQC's docs: typically 0.6 to 0.8); low
    values mean a long bright tail (fat, vessels).
    """
    return _ratio(mu_wm, float(np.percentile(image, 99.95)))


def inu_stats(field: np.ndarray) -> dict[str, float | None]:
    """``inu_med`` (median) and ``inu_range`` (P95 - P5) of a bias field inside the brain."""
    if field.size == 0:
        return {"inu_med": None, "inu_range": None}
    p05, med, p95 = np.percentile(field, [5, 50, 95])
    return {"inu_med": float(med), "inu_range": float(abs(p95 - p05))}


def volume_fractions(pvms: np.ndarray, names: tuple[str, ...]) -> dict[str, float | None]:
    """``icvs_<tissue>``: each tissue's partial-volume sum over that of all tissues.

    Parameters
    ----------
    pvms : ndarray
        ``(n_tissues, n_voxels)`` partial-volume (posterior) maps.
    names : tuple of str
        The tissue names, in row order.
    """
    sums = pvms.sum(axis=1, dtype=np.float64)
    total = float(sums.sum())
    return {f"icvs_{t}": _ratio(float(s), total) for t, s in zip(names, sums)}


def rpve(pvms: np.ndarray, names: tuple[str, ...], lo: float = 0.05,
         hi: float = 0.95) -> dict[str, float | None]:
    """``rpve_<tissue>``: the share of each tissue's partial-volume sum in mixed voxels.

    MRIQC's documentation defines the residual partial-volume effect as "a tissue-wise
    sum of partial volumes that fall in the range [5%-95%] of the total volume of a
    pixel". bids_qc divides that sum by the tissue's whole partial-volume sum, so that
    the value is a fraction in [0, 1] that does not grow with head size or voxel count
    (a deviation from MRIQC's unnormalised sum). Lower is better: blur and noise make
    more voxels mixed.
    """
    out: dict[str, float | None] = {}
    for t, p in zip(names, pvms):
        p = np.clip(p.astype(np.float64), 0.0, 1.0)
        mixed = (p >= lo) & (p <= hi)
        out[f"rpve_{t}"] = _ratio(float(p[mixed].sum()), float(p.sum()))
    return out


def fuzzy_jaccard(a: np.ndarray, b: np.ndarray) -> float | None:
    """Fuzzy Jaccard overlap ``sum(min(a, b)) / sum(max(a, b))`` of two probability maps.

    In [0, 1]; higher is better (MRIQC's ``tpm_overlap_*``).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return _ratio(float(np.minimum(a, b).sum()), float(np.maximum(a, b).sum()))


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: tuple[float, ...],
                       order: np.ndarray | None = None) -> list[float]:
    """Quantiles of ``values`` with ``weights``: the smallest value whose cumulative weight
    reaches ``q`` of the total (statsmodels' ``DescrStatsW.quantile``, MRIQC's).

    ``order`` (``argsort(values)``) can be passed when several weightings share the values.
    """
    order = np.argsort(values, kind="stable") if order is None else order
    cum = np.cumsum(weights[order], dtype=np.float64)
    at = np.searchsorted(cum, np.asarray(qs) * cum[-1], side="left")
    return [float(values[order[min(i, order.size - 1)]]) for i in at]


def summary_stats(values: np.ndarray, weights: np.ndarray | None = None,
                  order: np.ndarray | None = None) -> dict[str, float | None]:
    """MRIQC's per-region summary: mean, median, stdv, k, mad, p05, p95, n.

    As MRIQC (24.0) computes them: ``mean``, ``stdv`` (no n - 1 correction), ``median``,
    ``p05`` and ``p95`` weighted by the partial-volume map; ``k`` (Fisher's excess
    kurtosis) and ``mad`` (normalised, about the weighted median) over the voxels whose
    weight exceeds half the map's maximum; ``n`` the map's sum (a partial-volume voxel
    count). MRIQC also rounds intensities to integers and weights to 3 decimals first;
    bids_qc does not.

    Parameters
    ----------
    values : ndarray
        Intensities of the region's candidate voxels (1-D).
    weights : ndarray, optional
        Partial-volume weights of those voxels (a tissue's posterior); None: all 1.
    order : ndarray, optional
        ``argsort(values)``, shared by the tissues (one sort of 10^6 brain voxels).

    Returns
    -------
    dict
        Every value None when fewer than 2 voxels exceed half the maximum weight.
    """
    x = np.asarray(values).ravel()
    keys = ("mean", "median", "stdv", "k", "mad", "p05", "p95", "n")
    if weights is None:  # every voxel counts fully: plain statistics, no weight array
        inside, w, nw = x, None, float(x.size)
    else:
        w = np.asarray(weights, dtype=np.float64).ravel()
        nw = float(w.sum())
        inside = x[w > 0.5 * float(w.max())] if w.size else x[:0]
    if inside.size < 2 or nw <= 0:
        return dict.fromkeys(keys)
    if w is None:
        mean = float(np.mean(x, dtype=np.float64))
        var = float(np.var(x, dtype=np.float64))
        p05, median, p95 = (float(v) for v in np.percentile(x, [5, 50, 95]))
    else:
        mean = float(np.dot(w, x) / nw)
        var = float(np.dot(w, (x - mean) ** 2) / nw)
        p05, median, p95 = weighted_quantiles(x, w, (0.05, 0.5, 0.95), order)
    # Fisher's excess kurtosis (biased moments, as scipy.stats.kurtosis's default)
    centred = inside.astype(np.float64) - float(np.mean(inside, dtype=np.float64))
    sq = centred * centred
    m2 = float(sq.mean())
    kurt = float(np.dot(sq, sq) / sq.size / (m2 * m2)) - 3.0 if m2 > 0 else float("nan")
    return {
        "mean": mean, "median": median, "stdv": math.sqrt(max(var, 0.0)),
        "k": kurt if np.isfinite(kurt) else None, "mad": mad(inside, median),
        "p05": p05, "p95": p95, "n": nw,
    }
