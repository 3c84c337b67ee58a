"""Image quality metrics (IQMs) of the raw T1w, by MRIQC's definitions, offline and fast.

:mod:`~bids_qc.iqms.definitions` lists them (names, units, how each reads) and imports
nothing heavy; :func:`~bids_qc.iqms.compute.compute_iqms` computes them from a raw T1w
and its segmentation. Each step is a small module: :mod:`~bids_qc.iqms.masks` (head,
air, whether the background is usable), :mod:`~bids_qc.iqms.bias` (N4),
:mod:`~bids_qc.iqms.tissues` (the seeded mixture), :mod:`~bids_qc.iqms.measures` (the
formulas), :mod:`~bids_qc.iqms.smoothness` (FWHM), :mod:`~bids_qc.iqms.artifacts` (QI1,
QI2), :mod:`~bids_qc.iqms.tpm` (template overlap).
"""

from .definitions import BACKGROUND_IQMS, IQM_NAMES, IQMS, get_iqm

__all__ = ["BACKGROUND_IQMS", "IQMS", "IQM_NAMES", "get_iqm"]
