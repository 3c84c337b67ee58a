"""bids_qc: a BIDS-App that quality-checks structural brain MRI and its derivatives."""

__version__ = "0.2.0"
