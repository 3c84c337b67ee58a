"""QC model maths (plain numpy/torch, no nipype) and the model registry."""
