"""Participant-level throughput: many images in one job, Linear and MultiProc, --nprocs 1 and 2.

Goal (issue 12): the models load once per process; throughput in images per hour on 2 CPU
cores (and on a GPU where one is available: this script uses whatever ``--device auto``
picks and says which).

Demo datasets (synthetic images with planted failures, :mod:`bids_qc.demo`) are built once
under ``--cache`` (default ``/work/cache/scale/throughput``): ``--n2`` images at 2 mm and
``--n1`` at 1 mm, fMRIPrep- and FreeSurfer-style derivatives alternating. Each job is the
real command line (``bids_qc BIDS OUT participant --force --models ...``) in a fresh Python
process (``benchmarks/_throughput_child.py``); its wall time counts interpreter start,
imports, indexing, nipype and every image, so images per hour is what a job delivers.
Every process that loads a model's weights logs it; the table says how many processes
loaded weights and the most loads of one model in one process (1 = once per process).

Usage: ``python benchmarks/bench_throughput.py [--n2 8] [--n1 2] [--models segqc regqc]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import StageResult, machine_info, write_report  # noqa: E402

DEFAULT_CACHE = Path("/work/cache/scale/throughput")
CHILD = Path(__file__).with_name("_throughput_child.py")


def _dataset(cache: Path, n: int, zoom: float) -> Path:
    """A demo dataset of ``n`` images at ``zoom`` mm (built once, then reused)."""
    from bids_qc.demo import SUBJECTS, DemoSubject, build_dataset

    root = cache / f"demo_{n}x{zoom:g}mm"
    if (root / "truth.tsv").is_file():
        return root / "bids"
    subjects = [DemoSubject(f"{i + 1:02d}", SUBJECTS[i % len(SUBJECTS)].derivative,
                            SUBJECTS[i % len(SUBJECTS)].rmse_mm,
                            SUBJECTS[i % len(SUBJECTS)].damage,
                            SUBJECTS[i % len(SUBJECTS)].severity) for i in range(n)]
    bids, _ = build_dataset(root, subjects, seed=0, zoom=zoom)
    return bids


def _job(bids: Path, plugin: str, nprocs: int, models: list[str], tmp: Path) -> dict:
    # A fresh output and work folder per job: nipype would reuse a work folder's results.
    job = tmp / f"{bids.parent.name}_{plugin}_{nprocs}"
    out, log = job / "out", job / "loads.txt"
    job.mkdir(parents=True)
    args = [sys.executable, str(CHILD), str(bids), str(out), "participant", "--force", "-q",
            "--nprocs", str(nprocs), "-w", str(job / "work"), "--models", *models]
    if plugin != "MultiProc":
        config = tmp / f"{plugin}.yml"
        config.write_text(f"plugin: {plugin}\nplugin_args: {{}}\n")
        args += ["--plugin-config", str(config)]
    env = {**os.environ, "BIDS_QC_BENCH_LOAD_LOG": str(log)}
    proc = subprocess.run(args, capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parents[1])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"job failed ({proc.returncode}): {proc.stderr[-3000:]}")
    info = json.loads(lines[-1])
    if info["code"] != 0:
        raise RuntimeError(f"bids_qc exited {info['code']}: {proc.stderr[-3000:]}")
    loads = Counter(tuple(ln.split()) for ln in log.read_text().splitlines()) \
        if log.is_file() else Counter()
    info["processes"] = len({pid for pid, _ in loads})
    info["max_loads"] = max(loads.values(), default=0)
    info["images"] = len(list(out.glob("sub-*/anat/*_T1w.json")))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n2", type=int, default=8, help="demo images at 2 mm")
    parser.add_argument("--n1", type=int, default=2, help="demo images at 1 mm")
    parser.add_argument("--models", nargs="+", default=["segqc", "regqc"])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    configs = [("Linear", 1), ("Linear", 2), ("MultiProc", 1), ("MultiProc", 2)]
    sets = [(_dataset(ns.cache, ns.n2, 2.0), "2 mm", configs)]
    if ns.n1:
        sets.append((_dataset(ns.cache, ns.n1, 1.0), "1 mm",
                     [("Linear", 1), ("MultiProc", 2)]))
    device = machine_info().get("cuda") or "CPU only: no GPU on this machine"
    tmp = Path(tempfile.mkdtemp(prefix="bids_qc_throughput_"))
    stages = []
    for bids, label, runs in sets:
        for plugin, nprocs in runs:
            info = _job(bids, plugin, nprocs, ns.models, tmp)
            n, wall = info["images"], info["wall_s"]
            print(f"{label} {plugin} nprocs={nprocs}: {n} images in {wall:.0f} s", file=sys.stderr)
            stages.append(StageResult(
                stage=f"{n} images at {label}, {plugin}, --nprocs {nprocs}", n=n,
                median_s=wall, min_s=wall, max_s=wall, per_item_s=wall / max(n, 1),
                peak_rss_mb=info["rss_mb"], repeats=1,
                note=(f"{3600 * n / wall:.0f} images/h; weights loaded by "
                      f"{info['processes']} process(es), at most {info['max_loads']}x per "
                      "model and process; RSS of the main process")))
    print(f"device: {device}; {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f} (shared machine); models: {', '.join(ns.models)}; "
          "one fresh process per job (start-up included)")
    write_report("throughput", stages, ns.out)


if __name__ == "__main__":
    main()
