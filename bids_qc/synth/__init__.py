"""The synthetic data engine: images from label maps, failures with exact truth."""
