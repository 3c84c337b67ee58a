"""Choosing the torch device: a GPU when torch sees one, else the CPU."""

from __future__ import annotations

import logging
import os

LOGGER = logging.getLogger("bids_qc")


def why_no_gpu() -> str:
    """Why torch sees no GPU, as far as can be told without one, and what to do.

    Distinguishes the three common causes: a CPU-only build of torch, GPUs hidden by
    ``CUDA_VISIBLE_DEVICES``, and a CUDA build that finds no driver or device (a container
    started without ``--nv``/``--gpus``, or a node without GPUs).
    """
    import torch

    if torch.version.cuda is None:
        return (f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build "
                "of torch (or use a CUDA image of bids_qc) to use a GPU")
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1", "none", "NoDevFiles"):
        return (f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU; unset it or name the GPUs "
                "the job was given")
    return (f"torch (CUDA {torch.version.cuda}) finds no usable GPU: no NVIDIA driver or "
            "device is visible (run nvidia-smi; start Singularity/Apptainer with --nv, "
            "Docker with --gpus all, and ask SLURM for a GPU, e.g. --gres=gpu:1), or the "
            "driver is older than this CUDA build needs")


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
        LOGGER.info("No GPU seen by torch (%s): the models run on the CPU.", why_no_gpu())
        return "cpu"
    if requested == "cpu":
        return "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {requested}: torch sees no GPU: {why_no_gpu()}; or use --device cpu."
            )
        if ":" in requested:
            try:
                index = int(requested.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"--device {requested}: the GPU index must be a number, "
                                 "e.g. cuda:0") from None
            if index >= torch.cuda.device_count():
                raise ValueError(
                    f"--device {requested}: torch sees {torch.cuda.device_count()} GPU(s), "
                    f"numbered from 0 (CUDA_VISIBLE_DEVICES renumbers them); use --device "
                    "cuda or a lower index."
                )
        return requested
    raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, not {requested!r}")
