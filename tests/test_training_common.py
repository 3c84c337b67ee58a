"""The schedule, weights export and hardware line every training recipe uses."""

from __future__ import annotations

import math
import os

import pytest
import torch

from bids_qc.training.common import export_weights, hardware, learning_rate


def test_schedule_warms_up_then_decays_to_its_floor():
    assert learning_rate(0.0, 1.0) == pytest.approx(0.1)
    assert learning_rate(0.03, 1.0) == pytest.approx(1.0)
    assert learning_rate(1.0, 1.0) == pytest.approx(0.02)
    lrs = [learning_rate(p / 100, 2.0) for p in range(3, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # Without warm-up: a plain cosine from base to the floor.
    half = learning_rate(0.5, 1.0, warmup=0.0, floor=0.05)
    assert half == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_export_halves_floats_but_kept_prefixes_and_round_trips(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    path = tmp_path / "w.pt"
    export_weights(net, path, keep_float32=("1.running_",))
    state = torch.load(path, weights_only=True)
    assert state["0.weight"].dtype == torch.float16
    assert state["1.running_mean"].dtype == torch.float32
    assert state["1.num_batches_tracked"].dtype == torch.int64
    assert torch.allclose(state["0.weight"].float(), net[0].weight, atol=1e-3)
    assert not list(tmp_path.glob("*.tmp"))


def test_train_log_is_written_line_by_line(tmp_path):
    from bids_qc.training.common import train_logger

    log = train_logger(tmp_path)
    log("step 1")
    log("step 2")  # readable before the run ends (line-buffered)
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["step 1", "step 2"]


def test_hardware_names_the_machine_the_recipe_runs_on():
    text = hardware()
    assert text.startswith(f"{os.cpu_count()}-core CPU, ")
    assert text.endswith("no GPU") == (not torch.cuda.is_available())
