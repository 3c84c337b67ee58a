"""Pieces every training recipe shares: the learning-rate schedule and the weights export."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch


def learning_rate(progress: float, base: float, warmup: float = 0.03,
                  floor: float = 0.02) -> float:
    """Linear warm-up, then cosine decay to ``floor * base``, over ``progress`` in [0, 1].

    Parameters
    ----------
    progress : float
        Fraction of the training budget (steps or minutes) used so far.
    base : float
        Peak learning rate.
    warmup : float
        Fraction of the budget spent warming up from 10% of ``base`` (0: none).
    floor : float
        Final learning rate as a fraction of ``base``.
    """
    if progress < warmup:
        return base * (0.1 + 0.9 * progress / warmup)
    frac = min(1.0, (progress - warmup) / (1 - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def export_weights(net: torch.nn.Module, path: Path,
                   keep_float32: Sequence[str] = ()) -> None:
    """Save ``net``'s state dict as shipped (see :func:`export_state`)."""
    export_state(net.state_dict(), path, keep_float32)


def export_state(state: Mapping[str, torch.Tensor], path: Path,
                 keep_float32: Sequence[str] = ()) -> None:
    """Save a state dict as shipped: floating tensors in fp16, written atomically.

    Parameters
    ----------
    state : mapping
        The trained network's state dict (or a checkpoint's copy of it).
    path : Path
        The weights file.
    keep_float32 : sequence of str
        Prefixes of state entries kept in float32 (statistics fp16 would round too coarsely).
    """
    prefixes = tuple(keep_float32)
    out = {}
    for key, value in state.items():
        value = value.detach().cpu()
        half = value.is_floating_point() and not (prefixes and key.startswith(prefixes))
        out[key] = value.half() if half else value
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save(out, tmp)
    os.replace(tmp, path)


def train_logger(out: Path) -> Callable[[str], None]:
    """A function appending time-stamped lines to ``out/train.log`` (line-buffered, so a
    background run can be followed with ``tail -f``)."""
    logf = open(Path(out) / "train.log", "a", buffering=1)  # noqa: SIM115 - lives with the run

    def log(msg: str) -> None:
        logf.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

    return log


def hardware() -> str:
    """What a recipe trains on, for its summary and card (the recipes run on the CPU)."""
    gpu = "a GPU present but not used" if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core CPU, {gpu}"
