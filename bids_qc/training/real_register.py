"""Affine registration of a real T1w to a template, for the real-data evaluation sets.

The real-data evaluation sets need real images in template space (RegQC's good and
misregistered sets, the check of FreeSurfer's ``talairach.xfm``, the IXI people of the
training pool). They use the app's own registration, :mod:`bids_qc.register` (SimpleITK,
Mattes mutual information, through the brain mask of a segmentation), so the sets and a
raw-only run of the app register images the same way; this module only re-exports it for
the recipes.
"""

from __future__ import annotations

from ..register import RIM_MM, Registration, register_affine

__all__ = ["RIM_MM", "Registration", "register_affine"]
