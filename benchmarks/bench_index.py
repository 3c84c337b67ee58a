"""Indexing a large dataset once into ``--bids-database-dir``, then starting participant jobs.

Targets (issue 12): a dataset of 5,000 subjects indexes once in minutes; a participant job
that reuses the database starts in seconds.

The dataset is generated once under ``--cache`` (default ``/work/cache/scale/index``,
outside the repository) with *empty* placeholder files (indexing reads names, never image
data): per subject a raw T1w with its JSON sidecar, and fMRIPrep-style derivatives
(preprocessed T1w, template-space T1w, brain mask, aseg, transform). Each stage runs the
real command line (``bids_qc BIDS_DIR OUT participant --participant-label X
--bids-database-dir DB``) in a fresh Python process, stopped where the nipype workflow
would start (after input collection, model selection and the inputs' fingerprints), and
reports that process's wall time (interpreter start and imports included) and peak RSS:

1. ``index``: no database yet; pybids indexes the raw dataset and the derivatives.
2. ``reuse``: the database exists: what every job of a SLURM array pays.
3. ``no database``: for comparison, a job without ``--bids-database-dir``.

Usage: ``python benchmarks/bench_index.py [--subjects 5000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import StageResult, write_report  # noqa: E402

DEFAULT_CACHE = Path("/work/cache/scale/index")
SPACE = "MNI152NLin2009cAsym"

# Runs the CLI and stops it where the workflow would start; prints seconds and peak RSS.
_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import bids_qc.runner as runner
def stop(settings, rows, *args, **kwargs):
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print(json.dumps({"rows": len(rows), "s": time.perf_counter() - t0, "rss_mb": hwm / 1024}))
    raise SystemExit(0)
runner._run_workflow = stop
from bids_qc.cli import run
sys.exit(run(sys.argv[1:]))
"""


def make_dataset(root: Path, n: int) -> Path:
    """A BIDS dataset of ``n`` subjects with empty placeholder files (kept when complete)."""
    done = root / ".complete"
    if done.is_file() and done.read_text() == str(n):
        return root
    if root.exists():
        shutil.rmtree(root)
    deriv = root / "derivatives" / "fmriprep"
    deriv.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "bids_qc index benchmark", "BIDSVersion": "1.9.0", "DatasetType": "raw"}))
    (deriv / "dataset_description.json").write_text(json.dumps(
        {"Name": "fMRIPrep outputs", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep", "Version": "placeholder"}]}))
    labels = [f"{i:05d}" for i in range(1, n + 1)]
    (root / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{s}\n" for s in labels))
    for s in labels:
        anat = root / f"sub-{s}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-{s}_T1w.nii.gz").touch()
        (anat / f"sub-{s}_T1w.json").write_text("{}")
        fanat = deriv / f"sub-{s}" / "anat"
        fanat.mkdir(parents=True)
        for name in ("desc-preproc_T1w.nii.gz", f"space-{SPACE}_desc-preproc_T1w.nii.gz",
                     "desc-brain_mask.nii.gz", "desc-aseg_dseg.nii.gz",
                     f"from-T1w_to-{SPACE}_mode-image_xfm.h5"):
            (fanat / f"sub-{s}_{name}").touch()
    done.write_text(str(n))
    return root


def _job(bids: Path, out: Path, label: str, database: Path | None) -> dict:
    args = [sys.executable, "-c", _CHILD, str(bids), str(out), "participant",
            "--participant-label", label, "--skip-bids-validation", "-q"]
    if database is not None:
        args += ["--bids-database-dir", str(database)]
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"job failed ({proc.returncode}): {proc.stderr[-2000:]}")
    info = json.loads(lines[-1])
    if info["rows"] != 1:
        raise RuntimeError(f"expected one image for sub-{label}, got {info['rows']}")
    return {"wall": wall, **info}


def _stage(name: str, runs: list[dict], note: str) -> StageResult:
    walls = [r["wall"] for r in runs]
    med = statistics.median(walls)
    return StageResult(stage=name, n=1, median_s=med, min_s=min(walls), max_s=max(walls),
                       per_item_s=med, peak_rss_mb=max(r["rss_mb"] for r in runs),
                       repeats=len(runs), note=note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    t0 = time.perf_counter()
    bids = make_dataset(ns.cache / f"bids{ns.subjects}", ns.subjects)
    print(f"dataset: {bids} ({ns.subjects} subjects, made in "
          f"{time.perf_counter() - t0:.0f} s or reused)", file=sys.stderr)
    out = ns.cache / "out"
    database = ns.cache / f"db{ns.subjects}"
    shutil.rmtree(database, ignore_errors=True)
    labels = [f"{i:05d}" for i in (1, ns.subjects // 2, ns.subjects)]
    index = _job(bids, out, labels[0], database)
    print(f"index: {index['wall']:.1f} s", file=sys.stderr)
    reuse = [_job(bids, out, labels[i % len(labels)], database) for i in range(ns.repeats)]
    print(f"reuse: {[round(r['wall'], 1) for r in reuse]}", file=sys.stderr)
    fresh = [_job(bids, out, labels[0], None)]
    files = sum(1 for _ in bids.rglob("*") if _.is_file())
    stages = [
        _stage(f"index {ns.subjects} subjects into --bids-database-dir", [index],
               f"{files} files; first job (indexes, then starts); target: minutes"),
        _stage("participant job reusing the database", reuse,
               "to the workflow start; target: seconds"),
        _stage("participant job without a database", fresh, "to the workflow start"),
    ]
    print(f"CPU only; time to the point where the nipype workflow would start, "
          f"in a fresh process per job; dataset of {ns.subjects} subjects, empty images")
    write_report("index", stages, ns.out)


if __name__ == "__main__":
    main()
