"""Training and evaluation recipes for the QC models."""
