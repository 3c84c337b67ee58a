"""Where one image's wall time goes: start-up, indexing, hashing, workflow, each node.

Usage: ``python benchmarks/bench_profile.py [--models ...] [--out DIR]``

Two cases from the real data beside the repository (``../shared/data`` or
``BIDS_QC_SHARED_DATA``), each one participant in its own process, as a SLURM array runs
it (start-up, indexing and model loading included):

- ``freesurfer``: FreeSurfer's ``bert`` (1 mm, 256^3) as a FreeSurfer derivative, with the
  classical metrics and ``--models`` (default: SegQC, RegQC, ShapeQC, ManifoldQC);
- ``raw``: ds002748 ``sub-09`` (raw only), segmented by VINN and registered by bids_qc,
  with RegQC.

The phases come from the run's own log (``logs/run-*.json``: ``phase_seconds``, measured by
:class:`bids_qc.progress.Phases`; ``stage_seconds``, each node's wall time as the scheduler
saw it); ``start-up`` is the wall time of the process before the run began (interpreter,
imports, argument parsing), the whole process's wall time minus the phases. Linear plugin,
``--nprocs 1``, a fresh work directory. Record the load average: other jobs on the machine
lengthen everything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIDS_QC_SHARED_DATA", ROOT.parent / "shared" / "data"))


def freesurfer_dataset(root: Path) -> tuple[Path, str]:
    """bert as a raw T1w (its ``norm.mgz``) with a FreeSurfer derivative (a link)."""
    import nibabel as nib

    bert = SHARED / "freesurfer_bert"
    anat = root / "sub-bert" / "anat"
    anat.mkdir(parents=True)
    nib.save(nib.load(bert / "mri" / "norm.mgz"), anat / "sub-bert_T1w.nii.gz")
    _description(root)
    fs = root / "derivatives" / "freesurfer"
    fs.mkdir(parents=True)
    (fs / "sub-bert").symlink_to(bert.resolve())
    return root, "bert"


def raw_dataset(root: Path) -> tuple[Path, str]:
    """ds002748 ``sub-09``: one raw T1w, no derivatives."""
    src = SHARED / "ds002748" / "sub-09" / "anat" / "sub-09_T1w.nii.gz"
    anat = root / "sub-09" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-09_T1w.nii.gz").symlink_to(src.resolve())
    _description(root)
    return root, "09"


def _description(root: Path) -> None:
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "bench_profile", "BIDSVersion": "1.8.0"}))  # fmt: skip


def profile(dataset: Path, label: str, models: list[str], work: Path) -> dict[str, Any]:
    """Run one participant in a fresh process; its wall time, phases and node times."""
    out = work / "out"
    linear = work / "linear.yml"
    linear.write_text("plugin: Linear\n")
    cmd = [sys.executable, "-m", "bids_qc", str(dataset), str(out), "participant",
           "--participant-label", label, "--models", *models, "--plugin-config", str(linear),
           "--nprocs", "1", "-w", str(work / "work"), "--no-progress",
           "--skip-bids-validation"]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"bids_qc exited {done.returncode}:\n{done.stderr[-3000:]}")
    log = json.loads(max((out / "logs").glob("run-*.json")).read_text())
    phases = log["phase_seconds"]
    stages = next(iter(log["stage_seconds"].values()), {})
    return {"wall_s": wall, "startup_s": wall - sum(phases.values()), "phases": phases,
            "stages": stages}  # fmt: skip


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per phase (and node, indented under ``run``) and case."""
    cases = list(results)
    rows = ["| where | " + " | ".join(f"{c} s" for c in cases) + " |",
            "|---|" + "---:|" * len(cases)]  # fmt: skip

    def row(name: str, values: list[float | None]) -> None:
        rows.append(f"| {name} | " + " | ".join("" if v is None else f"{v:.2f}"
                                                 for v in values) + " |")  # fmt: skip

    row("start-up (interpreter, imports, options)", [results[c]["startup_s"] for c in cases])
    phases = list(dict.fromkeys(p for c in cases for p in results[c]["phases"]))
    for p in phases:
        row(p, [results[c]["phases"].get(p) for c in cases])
        if p == "run":
            nodes = list(dict.fromkeys(n for c in cases for n in results[c]["stages"]))
            for n in nodes:
                row(f"&nbsp;&nbsp;node `{n}`", [results[c]["stages"].get(n) for c in cases])
    row("**whole process**", [results[c]["wall_s"] for c in cases])
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["segqc", "regqc", "shapeqc", "manifoldqc"],
                   help="models of the FreeSurfer case")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ns = p.parse_args(argv)
    if not SHARED.is_dir():
        sys.exit(f"the real data folder {SHARED} is missing (set BIDS_QC_SHARED_DATA)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_profile_") as tmp:
        for name, make, models in (("freesurfer", freesurfer_dataset, ns.models),
                                   ("raw", raw_dataset, ["vinn", "regqc"])):
            case = Path(tmp) / name
            dataset, label = make(case / "ds")
            results[name] = profile(dataset, label, models, case)
            print(f"{name}: {results[name]['wall_s']:.1f} s", flush=True)
    load = os.getloadavg()
    text = (f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs; "
            f"FreeSurfer case models: {', '.join(ns.models)}; raw case: vinn, regqc\n\n"
            + table(results))  # fmt: skip
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "bench_profile.json").write_text(json.dumps(results, indent=1) + "\n")
    (ns.out / "bench_profile.md").write_text(f"# bench_profile\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
