"""Choosing the torch device: a GPU when torch sees one, else the CPU."""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("bids_qc")


def resolve_device(requested: str) -> str:
    """The device to run models on.

    Parameters
    ----------
    requested : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises
    ------
    ValueError
        If a CUDA device is requested but torch sees none (or not that one).
    """
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        LOGGER.info("No GPU seen by torch: the models run on the CPU.")
        return "cpu"
    if requested == "cpu":
        return "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {requested}: torch sees no GPU (CUDA build of torch, drivers, and "
                "--nv for Singularity or --gpus for Docker are needed); use --device cpu."
            )
        if ":" in requested:
            index = int(requested.split(":", 1)[1])
            if index >= torch.cuda.device_count():
                raise ValueError(
                    f"--device {requested}: torch sees {torch.cuda.device_count()} GPU(s)."
                )
        return requested
    raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, not {requested!r}")
