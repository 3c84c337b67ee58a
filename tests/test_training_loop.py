"""The shared sitting loop: pause and resume, atomic checkpoints, the resume check, the record."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bids_qc.training import loop
from bids_qc.training.loop import SittingConfig, load_checkpoint, run_sitting, sha256_file

STEPS = 6


def _net(seed: int) -> torch.nn.Module:
    # Dropout draws from torch's global generator, which the checkpoint must carry.
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                               torch.nn.Linear(16, 1))  # fmt: skip


def _sitting(out: Path, init_seed: int = 0, pause: float | None = None,
             **config: Any) -> tuple[dict[str, Any] | None, torch.nn.Module]:  # fmt: skip
    """One process's share of a sitting: a fresh network and optimiser, then the loop."""
    net = _net(init_seed)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    cfg = SittingConfig(**{"model": "toy", "out": out, "steps": STEPS, "lr": 1e-2, "seed": 5,
                           "warmup": 0.2, **config})  # fmt: skip

    def step(gstep: int) -> dict[str, float]:
        rng = np.random.default_rng([cfg.seed, gstep])  # the batch: a function of the step
        x = torch.as_tensor(rng.normal(size=(4, 8)), dtype=torch.float32)
        y = x.sum(1, keepdim=True)
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        return {"loss": float(loss.detach()), "samples": 4}

    record = run_sitting(cfg, net, opt, step, lambda p: torch.save(net.state_dict(), p),
                         weights_name="toy.pt", log=lambda m: None, log_every=3,
                         pause_after_minutes=pause)  # fmt: skip
    return record, net


def test_a_paused_and_resumed_sitting_equals_an_uninterrupted_one(tmp_path):
    whole, net = _sitting(tmp_path / "whole")
    assert whole is not None
    # Pause after every step (0 minutes): each call is a new process resuming the checkpoint,
    # with a network initialised differently (the checkpoint must replace it).
    pauses, record = 0, None
    while record is None:
        record, resumed = _sitting(tmp_path / "paused", init_seed=pauses and 100 + pauses,
                                     pause=0.0)
        pauses += record is None
        assert pauses < 2 * STEPS
    assert pauses >= 1 and record["resumes"] == pauses
    for a, b in zip(net.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert record["weights_sha256"] == whole["weights_sha256"]
    assert record["samples"] == whole["samples"] == 4 * STEPS
    # The logged losses (running means over log_every steps) survive the pauses too.
    assert record["final_losses"] == whole["final_losses"]


def _writer_code(path: Path) -> str:
    # Writes ever newer checkpoints; each one's tensor is filled with its own number, so a
    # reader can tell a complete payload from a torn one.
    return (
        "import sys, torch\n"
        "from bids_qc.training.loop import save_atomic\n"
        "data = torch.empty(3_000_000)\n"
        "for i in range(1, 10**6):\n"
        "    data.fill_(i)\n"
        f"    save_atomic({{'i': i, 'data': data}}, {str(path)!r})\n"
        "    if i == 1:\n"
        "        print('ready', flush=True)\n"
    )


@pytest.mark.parametrize("trial", range(2))
def test_a_writer_killed_mid_write_leaves_the_old_or_a_new_checkpoint(tmp_path, trial):
    path = tmp_path / loop.CHECKPOINT
    proc = subprocess.Popen([sys.executable, "-c", _writer_code(path)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(random.uniform(0.05, 0.4))
    finally:
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait()
    payload = load_checkpoint(path)
    assert payload is not None and payload["i"] >= 1
    data = payload["data"]
    assert data.shape == (3_000_000,) and bool((data == payload["i"]).all())
    # Whatever the kill left behind is a temporary file, never the checkpoint's name.
    assert {p.name for p in tmp_path.iterdir()} - {path.name} <= {
        f".{path.name}.{proc.pid}.tmp"}


def test_resuming_with_other_settings_names_the_checkpoint(tmp_path):
    record, _ = _sitting(tmp_path, pause=0.0)
    assert record is None and (tmp_path / loop.CHECKPOINT).is_file()
    with pytest.raises(ValueError, match=str(tmp_path / loop.CHECKPOINT)):
        _sitting(tmp_path, pause=0.0, lr=2e-2)
    with pytest.raises(ValueError, match="another sitting"):
        _sitting(tmp_path, pause=0.0, options={"batch": 8})
    # Threads are not part of a sitting's identity: the same sitting resumes.
    record, _ = _sitting(tmp_path, threads=2)
    assert record is not None and record["resumes"] == 1


def test_the_record_describes_the_sitting_and_its_exported_weights(tmp_path):
    record, _ = _sitting(tmp_path, start_step=40, warm_start="shipped toy.pt sha256 ab",
                         options={"batch": 4})  # fmt: skip
    assert record is not None
    on_disk = json.loads((tmp_path / loop.RECORD).read_text())
    assert on_disk == record
    for key in ("model", "started", "ended", "start_step", "end_step", "steps", "samples",
                "cpu_hours", "wall_hours", "machine", "warm_start", "weights_sha256",
                "final_losses", "seed", "lr", "options", "torch", "threads", "resumes",
                "completed", "planned_steps"):
        assert key in record, key
    assert (record["start_step"], record["end_step"], record["steps"]) == (40, 46, STEPS)
    assert record["completed"] and record["planned_steps"] == STEPS
    assert record["model"] == "toy" and record["warm_start"] == "shipped toy.pt sha256 ab"
    assert record["weights_sha256"] == sha256_file(tmp_path / "toy.pt")
    assert record["options"] == {"batch": 4} and set(record["final_losses"]) == {"loss"}
    assert record["cpu_hours"] >= 0 and record["started"] <= record["ended"]
    assert "cores" in record["machine"]


def test_bf16_is_refused_where_the_cpu_would_emulate_it(capsys):
    import argparse

    from bids_qc.training.loop import native_bf16, require_native_bf16

    avx2 = "flags\t\t: fpu sse sse2 avx avx2 fma\n"
    bf16 = "flags\t\t: fpu sse avx2 avx512f avx512_bf16\n"
    assert not native_bf16(avx2) and native_bf16(bf16)
    assert native_bf16("flags : amx_bf16 amx_tile")
    parser = argparse.ArgumentParser(prog="recipe")
    require_native_bf16(parser, True, bf16)      # native: accepted
    require_native_bf16(parser, False, avx2)     # not asked for: accepted
    with pytest.raises(SystemExit) as exc:
        require_native_bf16(parser, True, avx2)
    assert exc.value.code == 2 and "drop --bf16" in capsys.readouterr().err
