"""Benchmark harness shared by every benchmark script: wall time and peak memory per stage.

Protocol (the backbone issue): 2 CPU cores, 2 torch threads, median of ``repeats`` runs
after ``warmup`` runs; on a GPU the same with batch sizes 1 and 16. Results are written
as JSON and as a markdown table, and the table is printed.

Peak memory is measured per stage by resetting the kernel's high-water mark before it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """Timing and memory of one benchmark stage."""

    stage: str
    n: int
    median_s: float
    min_s: float
    max_s: float
    per_item_s: float
    peak_rss_mb: float
    repeats: int
    note: str = ""


def setup_threads(n_threads: int = 2) -> None:
    """Pin numeric libraries to ``n_threads`` threads (call before importing torch)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n_threads)
    try:
        import torch

        torch.set_num_threads(n_threads)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak RSS since the last reset (``VmHWM``), or since start where it cannot be read."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(
    stage: str,
    fn: Callable[[], Any],
    *,
    n: int = 1,
    repeats: int = 10,
    warmup: int = 1,
    note: str = "",
) -> StageResult:
    """Run ``fn`` ``warmup`` + ``repeats`` times and return its median wall time and peak RSS.

    Parameters
    ----------
    stage : str
        Name of the stage in the table.
    fn : callable
        Zero-argument callable doing the work of one repeat (``n`` items).
    n : int
        Number of items one call processes (for the per-item column).

    Notes
    -----
    The peak RSS is this stage's own: the kernel's high-water mark is reset before the
    stage (``/proc/self/clear_refs``), so no fork is needed (forking after torch has run
    parallel work can deadlock). It includes what earlier stages left allocated.
    """
    for _ in range(warmup):
        fn()
    reset = _reset_peak_rss()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    peak = _peak_rss_mb()
    if not reset:
        note = (note + "; " if note else "") + "peak RSS since process start"
    med = statistics.median(times)
    return StageResult(
        stage=stage,
        n=n,
        median_s=med,
        min_s=min(times),
        max_s=max(times),
        per_item_s=med / max(n, 1),
        peak_rss_mb=peak,
        repeats=repeats,
        note=note,
    )


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        from bids_qc.training.loop import native_bf16

        # bf16 rows mean little without it: autocast then emulates bfloat16.
        info["native_bf16"] = native_bf16()
    except ImportError:  # pragma: no cover
        pass
    return info


def markdown_table(results: list[StageResult]) -> str:
    """The results as a markdown table."""
    head = "| stage | n | median s | per item s | min s | max s | peak RSS MB | repeats | note |"
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---|"
    rows = [
        f"| {r.stage} | {r.n} | {r.median_s:.4f} | {r.per_item_s:.4f} | {r.min_s:.4f} | "
        f"{r.max_s:.4f} | {r.peak_rss_mb:.0f} | {r.repeats} | {r.note} |"
        for r in results
    ]
    return "\n".join([head, sep, *rows])


def write_report(name: str, results: list[StageResult], out_dir: Path | None = None) -> Path:
    """Write ``<name>.json`` and ``<name>.md`` into ``out_dir`` and print the table."""
    out_dir = Path(out_dir or Path(__file__).parent / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine_info(), "results": [asdict(r) for r in results]}
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = markdown_table(results)
    (out_dir / f"{name}.md").write_text(f"# {name}\n\n{table}\n")
    print(table)
    return out_dir / f"{name}.json"
