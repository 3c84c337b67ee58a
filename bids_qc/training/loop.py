"""The training loop every recipe shares: step budget, atomic checkpoints, resume, sitting.

A *sitting* is one run of a recipe on a fixed number of optimiser steps. It starts from the
shipped weights (warm start) or from the sitting's own checkpoint (resume), follows one
learning-rate schedule over its steps, checkpoints every few minutes and can pause (write a
checkpoint and exit) when the session must end; resumed, it finishes exactly as it would have
without the pause. At the end it exports the weights and writes ``sitting.json``, the record
that :mod:`bids_qc.training.ledger` adds to the model's card.

Determinism is the recipe's side of the contract: its step function must draw everything from
``(seed, global step)`` (e.g. ``np.random.default_rng([seed, step])``) and from torch's global
generator, which the checkpoint saves. Then, with one thread and fp32, a paused and resumed
sitting gives weights bitwise equal to an uninterrupted one on the same machine (tested).

Steps are *global*: a sitting that follows earlier ones starts at their total
(``start_step``), so its data stream continues instead of repeating the first sitting's.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bids_qc.training.common import learning_rate

#: Name of a sitting's checkpoint and record inside its output folder.
CHECKPOINT = "checkpoint.pt"
RECORD = "sitting.json"

#: A recipe's step: given the global step, compute the loss and call ``backward`` (the loop
#: zeroes the gradients before and steps the optimiser after); returns the step's scalars,
#: with ``samples`` (training samples the step saw) among them.
StepFn = Callable[[int], Mapping[str, float]]


@dataclass(frozen=True)
class SittingConfig:
    """What a sitting is: the settings that must not change when it resumes.

    Parameters
    ----------
    model : str
        The model's registry name (``vinn``, ``regqc``, ...).
    out : Path
        Output folder: log, checkpoint, exported weights, ``sitting.json``.
    steps : int
        Optimiser steps of this sitting.
    lr : float
        Peak learning rate (warm-up then cosine decay over the sitting's steps).
    seed : int
        Seed of the data stream and of torch's generator.
    start_step : int
        Global step the sitting starts at (the earlier sittings' total).
    warm_start : str
        What the weights started from (e.g. ``shipped vinn.pt sha256 ...`` or ``scratch``).
    threads : int
        Torch threads.
    warmup : float
        Fraction of the steps spent warming the learning rate up.
    options : dict
        The recipe's own settings (recorded; part of the resume check).
    """

    model: str
    out: Path
    steps: int
    lr: float
    seed: int
    start_step: int = 0
    warm_start: str = "scratch"
    threads: int = 1
    warmup: float = 0.03
    options: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """The settings a checkpoint must match to be resumed (everything but ``out``)."""
        d = asdict(self)
        d.pop("out")
        d.pop("threads")  # threads change speed, not (beyond rounding) the result
        return json.loads(json.dumps(d, default=str))


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it into place.

    A reader sees the old file or the new one, never a half-written one, even when the
    writer is killed mid-write (the rename is atomic on one file system).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """A checkpoint written by :func:`save_atomic`, or None if there is none.

    Loaded with ``weights_only=True``: a checkpoint holds tensors, numbers and strings only.
    """
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def machine() -> str:
    """The CPU (model name and cores) a sitting ran on, for its record."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ", GPU present but not used" if torch.cuda.is_available() else ", no GPU"
    return f"{name}, {os.cpu_count()} cores{gpu}"


def sha256_file(path: Path) -> str:
    """sha256 of a file (the exported weights, recorded in the sitting)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_state(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The shipped weights of a registered model (floats as float32), and what they are.

    The description (``shipped <file> <version> sha256 <hex>``) is a sitting's ``warm_start``.
    """
    from bids_qc.models.registry import get_spec, load_state_dict

    spec = get_spec(name)
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in load_state_dict(spec).items()}  # fmt: skip
    return state, f"shipped {spec.weights} {spec.version} sha256 {spec.sha256}"


def add_sitting_arguments(parser: argparse.ArgumentParser, *, lr: float, seed: int,
                          threads: int = 1, checkpoint_minutes: float = 3.0,
                          steps_required: bool = True) -> None:
    """The options every recipe's sitting takes (``--steps`` required), with its defaults.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The recipe's parser.
    lr, seed, threads, checkpoint_minutes
        The recipe's defaults of ``--lr``, ``--seed``, ``--threads``, ``--checkpoint-minutes``.
    steps_required : bool
        False for a recipe with modes that do not train (building data only): it then
        checks ``--steps`` itself with :func:`require_steps`.
    """
    parser.add_argument("--steps", type=int, required=steps_required, default=None,
                        help="optimiser steps of this sitting (required to train)")
    parser.add_argument("--start-step", type=int, default=0,
                        help="global step to start at (after the earlier sittings: "
                             "python -m bids_qc.training.ledger next-step MODEL)")  # fmt: skip
    parser.add_argument("--from-scratch", action="store_true",
                        help="start from random weights instead of the shipped ones")
    parser.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--threads", type=int, default=threads, help="torch threads")
    parser.add_argument("--checkpoint-minutes", type=float, default=checkpoint_minutes,
                        help="wall minutes between checkpoints")
    parser.add_argument("--pause-after-minutes", type=float, default=None,
                        help="checkpoint and stop after this long (resume later with the same "
                             "options: same result)")  # fmt: skip
    parser.add_argument("--record-only", action="store_true",
                        help="write sitting.json of a sitting stopped between checkpoints "
                             "(its weights re-exported from the last checkpoint) and exit")


#: CPU flags of native bfloat16 arithmetic (Linux names).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX).

    Elsewhere (e.g. an AVX2-only CPU) autocast emulates bfloat16: a SegQC step measured 13 s
    there against about 4 s in float32. ``cpuinfo`` is ``/proc/cpuinfo``'s text (read when
    None); without it, torch's CPU capability decides.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return torch.backends.cpu.get_cpu_capability() == "AVX512"
    flags = set(cpuinfo.split())
    return any(f in flags for f in BF16_FLAGS)


def require_native_bf16(parser: argparse.ArgumentParser, bf16: bool,
                        cpuinfo: str | None = None) -> None:  # fmt: skip
    """Stop with a usage error when ``--bf16`` is asked for on a CPU that would emulate it."""
    if bf16 and not native_bf16(cpuinfo):
        parser.error("--bf16: this CPU has no native bfloat16 (neither avx512_bf16 nor amx_bf16 "
                     "in /proc/cpuinfo), so autocast would emulate it, several times slower "
                     "than float32 here; drop --bf16")


def require_steps(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Stop with a usage error unless ``--steps`` is a positive number."""
    if args.steps is None or args.steps < 1:
        parser.error("--steps N (a positive number of optimiser steps) is required to train")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sitting_record(identity: dict[str, Any], loop: dict[str, Any], weights: Path,
                   threads: int | None = None) -> dict[str, Any]:
    """The record of a sitting (finished, or paused: ``completed`` false) and its weights.

    Parameters
    ----------
    identity : dict
        :meth:`SittingConfig.identity` (as the checkpoint stores it).
    loop : dict
        The loop state (steps done, samples, CPU and wall seconds, losses).
    weights : Path
        The exported weights of that state.
    threads : int, optional
        Torch threads of the (last) process.
    """
    done = int(loop["step"])
    return {
        "model": identity["model"], "started": loop["started"], "ended": _now(),
        "completed": done >= identity["steps"], "start_step": identity["start_step"],
        "steps": done, "planned_steps": identity["steps"],
        "end_step": identity["start_step"] + done, "samples": loop["samples"],
        "cpu_hours": round(loop["cpu_s"] / 3600, 3), "wall_hours": round(loop["wall_s"] / 3600, 3),
        "resumes": loop["resumes"], "machine": machine(), "threads": threads,
        "seed": identity["seed"], "lr": identity["lr"], "warm_start": identity["warm_start"],
        "options": identity["options"], "weights_sha256": sha256_file(weights),
        "final_losses": loop["losses"][-1][1] if loop["losses"] else {},
        "torch": torch.__version__,
    }  # fmt: skip


def record_from_checkpoint(out: Path, weights_name: str,
                           export: Callable[[dict[str, torch.Tensor], Path], None]
                           ) -> dict[str, Any]:  # fmt: skip
    """Write ``sitting.json`` of a sitting stopped between checkpoints (e.g. at the end of a
    session): its weights are re-exported from the last checkpoint, so record and weights
    agree, and the sitting can still be resumed later.

    Parameters
    ----------
    out : Path
        The sitting's folder.
    weights_name : str
        File name of the exported weights.
    export : callable
        Writes a state dict in the shipped form to a path.
    """
    out = Path(out)
    saved = load_checkpoint(out / CHECKPOINT)
    if saved is None:
        raise ValueError(f"{out / CHECKPOINT} does not exist: nothing to record")
    export(saved["model"], out / weights_name)
    record = sitting_record(saved["identity"], saved["loop"], out / weights_name)
    (out / RECORD).write_text(json.dumps(record, indent=1))
    return record


def run_sitting(
    config: SittingConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step_fn: StepFn,
    export: Callable[[Path], None],
    *,
    weights_name: str,
    log: Callable[[str], None] = print,
    checkpoint_minutes: float = 3.0,
    pause_after_minutes: float | None = None,
    log_every: int = 20,
) -> dict[str, Any] | None:
    """Run (or resume) one sitting; returns its record, or None if it paused.

    Parameters
    ----------
    config : SittingConfig
        The sitting; a checkpoint in ``config.out`` is resumed if its identity matches.
    model, optimizer : torch.nn.Module, torch.optim.Optimizer
        Already warm-started by the recipe; replaced by the checkpoint's state on resume. A
        parameter group's ``lr_scale`` (default 1) multiplies the schedule's rate for it.
    step_fn : StepFn
        One training step (see :data:`StepFn`).
    export : callable
        Writes the shipped form of the weights to a path.
    weights_name : str
        File name of the exported weights inside ``config.out``.
    log : callable
        Where progress lines go.
    checkpoint_minutes : float
        Wall minutes between checkpoints.
    pause_after_minutes : float, optional
        Checkpoint and return None after this many wall minutes of this process (to be
        resumed later with the same config); the result does not depend on it.
    log_every : int
        Steps between log lines (losses averaged over them).

    Raises
    ------
    ValueError
        If ``config.out`` holds a checkpoint of a different sitting.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    ckpt_path = out / CHECKPOINT
    saved = load_checkpoint(ckpt_path)
    if saved is not None:
        if saved["identity"] != config.identity():
            raise ValueError(
                f"{ckpt_path} belongs to another sitting ({saved['identity']}); use a new "
                "--out folder, or the same options to resume it")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        loop = dict(saved["loop"])
        loop["resumes"] += 1
        log(f"resumed {config.model} at step {loop['step']} of {config.steps}")
    else:
        torch.manual_seed(config.seed)
        loop = {"step": 0, "samples": 0, "cpu_s": 0.0, "wall_s": 0.0, "resumes": 0,
                "started": _now(), "losses": [], "run": {}}  # fmt: skip
        log(f"sitting of {config.model}: {config.steps} steps from global step "
            f"{config.start_step}, warm start: {config.warm_start}")  # fmt: skip

    def checkpoint() -> None:
        nonlocal cpu0, wall0
        loop["cpu_s"] += time.process_time() - cpu0
        loop["wall_s"] += time.time() - wall0
        cpu0, wall0 = time.process_time(), time.time()
        save_atomic({"identity": config.identity(), "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                     "loop": loop}, ckpt_path)  # fmt: skip

    cpu0, wall0 = time.process_time(), time.time()
    t_process, t_ckpt = time.time(), time.time()
    model.train()
    # The running sums between log lines live in the checkpoint, so that a paused sitting
    # logs (and records) the same means as an uninterrupted one.
    run: dict[str, float] = loop.setdefault("run", {})
    while loop["step"] < config.steps:
        lr = learning_rate(loop["step"] / config.steps, config.lr, warmup=config.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # a group may step faster
        optimizer.zero_grad(set_to_none=True)
        scalars = dict(step_fn(config.start_step + loop["step"]))
        optimizer.step()
        loop["step"] += 1
        loop["samples"] += int(scalars.pop("samples", 0))
        for k, v in scalars.items():
            run[k] = run.get(k, 0.0) + float(v)
        if loop["step"] % log_every == 0 or loop["step"] == config.steps:
            n = loop["step"] % log_every or log_every
            mean = {k: round(v / n, 5) for k, v in run.items()}
            loop["losses"].append([config.start_step + loop["step"], mean])
            log(f"step {loop['step']}/{config.steps} lr={lr:.2e} "
                + " ".join(f"{k}={v:.4f}" for k, v in mean.items()))
            run.clear()
        if time.time() - t_ckpt > checkpoint_minutes * 60:
            checkpoint()
            export(out / weights_name)
            t_ckpt = time.time()
        if (pause_after_minutes is not None and loop["step"] < config.steps
                and time.time() - t_process > pause_after_minutes * 60):
            checkpoint()
            export(out / weights_name)
            (out / RECORD).write_text(json.dumps(sitting_record(
                config.identity(), loop, out / weights_name, threads=config.threads), indent=1))
            log(f"paused at step {loop['step']}; resume with the same options")
            return None
    checkpoint()
    weights = out / weights_name
    export(weights)
    record = sitting_record(config.identity(), loop, weights, threads=config.threads)
    (out / RECORD).write_text(json.dumps(record, indent=1))
    log(f"sitting done: {json.dumps(record)}")
    return record
