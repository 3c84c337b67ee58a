"""Thin nipype interfaces, one per QC model; the maths lives in :mod:`bids_qc.models`."""
