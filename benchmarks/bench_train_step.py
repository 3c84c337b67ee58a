"""Training samples per CPU-second of the five networks, by numeric format and threads.

One training step is what each recipe's step does to the network: forward, loss, backward
and optimiser step, at the recipe's real input size and batch (inputs are random tensors of
those shapes: the data pipeline is not timed). Variants: ``fp32``; ``bf16`` (autocast of
the forward pass, loss in fp32, as VINN's ``--bf16``); ``channels_last`` (the network and
its input in ``channels_last`` / ``channels_last_3d``); ``compile`` (``torch.compile`` of
the network; its compilation is timed apart, and a failure is reported, not raised).

``samples/CPU-s`` divides the samples of the timed steps by the process CPU time (all
threads), the figure that a shared machine disturbs least; ``samples/s`` by the wall time.

Usage: ``python benchmarks/bench_train_step.py [--quick] [--threads 1 2]
[--networks ...] [--variants ...] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import machine_info, setup_threads  # noqa: E402

NETWORKS = ("regqc", "segqc", "shapeqc", "manifoldqc", "vinn")
VARIANTS = ("fp32", "bf16", "channels_last", "compile")


@dataclass
class Row:
    """One measured (network, variant, threads)."""

    network: str
    input: str
    variant: str
    threads: int
    steps: int
    samples_per_cpu_s: float | None
    samples_per_s: float | None
    step_ms: float | None
    note: str = ""


@dataclass
class Setup:
    """A network at its recipe's batch: the step's loss from inputs, and the inputs."""

    net: Any
    inputs: dict[str, Any]
    loss: Callable[[Any, dict[str, Any], bool], Any]
    samples: int
    shape: str
    dims: int  # spatial dimensions (2: channels_last, 3: channels_last_3d)
    optimizer: str = "adam"


def _regqc() -> Setup:
    import torch
    import torch.nn.functional as F

    from bids_qc.models.regqc import RegQCNet, model_grid
    from bids_qc.training.regqc import template

    shape, _ = model_grid(template())
    batch = 8  # the recipe's --batch-size

    def loss(net: Any, d: dict[str, Any], bf16: bool) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = net(d["x"])
        return F.mse_loss(pred.float() / 100.0, d["y"] / 100.0)

    return Setup(RegQCNet(), {"x": torch.randn(batch, 2, *shape),
                              "y": torch.rand(batch) * 100}, loss, batch,
                 f"{batch} x 2 x {'x'.join(map(str, shape))}", 3)  # fmt: skip


def _segqc() -> Setup:
    import torch

    from bids_qc.models.segqc import GRID_SHAPE, OTHER_GROUP, SegQCNet
    from bids_qc.training.segqc import expand

    batch = 8
    groups = torch.randint(0, OTHER_GROUP + 1, (batch, *GRID_SHAPE), dtype=torch.uint8)
    x = expand(torch.rand(batch, *GRID_SHAPE), groups)

    def loss(net: Any, d: dict[str, Any], bf16: bool) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = net(d["x"])
        return ((pred.float() - d["y"]) ** 2).mean()

    net = SegQCNet()
    with torch.no_grad():
        n_out = net.eval()(x[:1]).shape[1]
    return Setup(net.train(), {"x": x, "y": torch.rand(batch, n_out)}, loss, batch,
                 f"{batch} x {x.shape[1]} x {'x'.join(map(str, GRID_SHAPE))}", 3, "adamw")


def _shapeqc() -> Setup:
    import torch
    import torch.nn.functional as F

    from bids_qc.models.shapeqc import GRID, N_CHANNELS, SCALARS, ShapeQCNet
    from bids_qc.structures import SUBCORTICAL_KINDS

    batch = 32

    def loss(net: Any, d: dict[str, Any], bf16: bool) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logit = net(d["x"], d["kind"], d["scalars"])
        return F.binary_cross_entropy_with_logits(logit.float(), d["y"])

    inputs = {"x": torch.randn(batch, N_CHANNELS, GRID, GRID),
              "kind": torch.randint(0, len(SUBCORTICAL_KINDS), (batch,)),
              "scalars": torch.randn(batch, len(SCALARS)),
              "y": (torch.rand(batch) < 0.33).float()}  # fmt: skip
    return Setup(ShapeQCNet(16), inputs, loss, batch,
                 f"{batch} x {N_CHANNELS} x {GRID}x{GRID}", 2, "adamw")


def _manifoldqc() -> Setup:
    import numpy as np
    import torch

    from bids_qc.models.manifoldqc import (
        CROP_SHAPE,
        N_CLASSES,
        ManifoldVAE,
        kl_divergence,
        recon_loss,
        to_tensor,
    )

    batch = 4
    rng = np.random.default_rng(0)
    x = torch.stack([to_tensor(rng.random(CROP_SHAPE).astype(np.float32),
                               rng.integers(0, N_CLASSES, CROP_SHAPE)) for _ in range(batch)])

    def loss(net: Any, d: dict[str, Any], bf16: bool) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            image, logits, mu, logvar = net(d["x"])
        rec = recon_loss(image.float(), logits.float(), d["x"]).mean()
        return rec + 0.1 * kl_divergence(mu.float(), logvar.float()).mean()

    return Setup(ManifoldVAE(8), {"x": x}, loss, batch,
                 f"{batch} x {x.shape[1]} x {'x'.join(map(str, CROP_SHAPE))}", 3)


def _vinn() -> Setup:
    import torch

    from bids_qc.models.vinn import N_CLASSES, N_SAGITTAL, N_SLICES, VIEWS, VINN
    from bids_qc.training.vinn import PATCH_MM, loss_fn

    batch, side = 4, int(PATCH_MM)  # patches of 128 mm at 1 mm, one batch per view
    inputs = {"x": torch.rand(batch, N_SLICES, side, side)}
    for view in VIEWS:
        n = N_SAGITTAL if view == "sagittal" else N_CLASSES
        inputs[f"y_{view}"] = torch.randint(0, n, (batch, side, side))
        inputs[f"w_{view}"] = torch.ones(n)

    def loss(net: Any, d: dict[str, Any], bf16: bool) -> Any:
        total = 0.0
        for view in VIEWS:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = net.views[view](d["x"], (1.0, 1.0))
            total = total + loss_fn(logits.float(), d[f"y_{view}"], d[f"w_{view}"])
        return total

    return Setup(VINN(), inputs, loss, batch * len(VIEWS),
                 f"3 views x {batch} x {N_SLICES} x {side}x{side}", 2, "adamw")


SETUPS: dict[str, Callable[[], Setup]] = {
    "regqc": _regqc, "segqc": _segqc, "shapeqc": _shapeqc, "manifoldqc": _manifoldqc,
    "vinn": _vinn}  # fmt: skip


def _step(name: str, s: Setup, variant: str) -> Callable[[], None]:
    """One training step of the network ``s`` in ``variant``."""
    import torch

    net, inputs = s.net.train(), dict(s.inputs)
    if variant == "channels_last":
        fmt = torch.channels_last if s.dims == 2 else torch.channels_last_3d
        # Tensors of the format's rank only (Module.to refuses ManifoldQC's 4-D template).
        with torch.no_grad():
            for p in net.parameters():
                if p.ndim == s.dims + 2:
                    p.data = p.data.contiguous(memory_format=fmt)
        inputs = {k: v.contiguous(memory_format=fmt) if v.ndim == s.dims + 2 else v
                  for k, v in inputs.items()}  # fmt: skip
    params = list(net.parameters())
    opt = (torch.optim.AdamW(params, lr=1e-4) if s.optimizer == "adamw"
           else torch.optim.Adam(params, lr=1e-4))  # fmt: skip
    model = net
    if variant == "compile":
        if name == "vinn":  # the views are called, not the container: compile each
            for view in list(net.views):
                net.views[view] = torch.compile(net.views[view])
        else:
            model = torch.compile(net)
    bf16 = variant == "bf16"

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        s.loss(model, inputs, bf16).backward()
        opt.step()

    return step


def measure(name: str, variant: str, threads: int, warmup: int, steps: int) -> Row:
    """Time ``steps`` training steps of one network in one variant (after ``warmup``)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    s = SETUPS[name]()
    note = ""
    try:
        step = _step(name, s, variant)
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        if variant == "compile":
            note = f"compiled in {time.perf_counter() - t0:.0f} s (first {warmup} steps)"
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            step()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    except Exception as exc:  # noqa: BLE001 - a failing variant is a result, not a crash
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return Row(name, s.shape, variant, threads, 0, None, None, None,
                   f"failed: {last[:160]}")  # fmt: skip
    n = s.samples * steps
    return Row(name, s.shape, variant, threads, steps, n / cpu, n / wall,
               1000 * wall / steps, note)  # fmt: skip


def table(rows: list[Row]) -> str:
    """The rows as a markdown table (fp32's samples/CPU-s as the reference of each row)."""
    ref = {(r.network, r.threads): r.samples_per_cpu_s for r in rows if r.variant == "fp32"}
    lines = ["| network | input (batch x channels x grid) | variant | threads | samples/CPU-s | "
             "vs fp32 | samples/s | step ms | note |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        base = ref.get((r.network, r.threads))
        if r.samples_per_cpu_s is None:
            figures = "n/a | n/a | n/a | n/a"
        else:
            rel = f"{r.samples_per_cpu_s / base:.2f}x" if base else "n/a"
            figures = (f"{r.samples_per_cpu_s:.2f} | {rel} | {r.samples_per_s:.2f} | "
                       f"{r.step_ms:.0f}")
        lines.append(f"| {r.network} | {r.input} | {r.variant} | {r.threads} | {figures} | "
                     f"{r.note.replace('|', '/')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="1 warm-up and 2 timed steps per row (default: 2 and 6)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ns = p.parse_args(argv)
    # A cold compiler cache, so that compile times are a first compilation's.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="bench_inductor_"))
    setup_threads(max(ns.threads))
    info = machine_info()
    print(f"CPU capability {info.get('cpu_capability')}, native bfloat16: "
          f"{info.get('native_bf16')}", flush=True)
    warmup, steps = (1, 2) if ns.quick else (2, 6)
    rows = []
    for name in ns.networks:
        for variant in ns.variants:
            for threads in ns.threads:
                # A compiled step needs more warm-up: its first calls compile and recompile.
                row = measure(name, variant, threads, warmup + (variant == "compile"), steps)
                print(f"{row.network} {row.variant} {row.threads}t: "
                      f"{row.samples_per_cpu_s or 0:.2f} samples/CPU-s {row.note}", flush=True)
                rows.append(row)
    text = table(rows)
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "bench_train_step.json").write_text(json.dumps(
        {"machine": info, "quick": ns.quick, "warmup": warmup, "steps": steps,
         "rows": [asdict(r) for r in rows]}, indent=1) + "\n")  # fmt: skip
    (ns.out / "bench_train_step.md").write_text(f"# bench_train_step\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
