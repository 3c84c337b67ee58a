"""Wall time, CPU time and peak memory of the IQMs of one 1 mm T1w (issue 22: <= 5 s on
2 cores).

Input: 1 mm whole heads (256 x 256 x 176) made from SynthSeg label maps
(``../shared/data/synthseg_label_maps``, FreeSurfer codes with scalp and skull) through
:func:`bids_qc.synth.artefacts.t1w_from_labels`, Rician noise and a graded bias field (N4's
time grows with the field it has to remove), or the analytic phantom at 1 mm when the
real data folder is absent. The segmentation is the label map's brain. The time covers
:func:`bids_qc.iqms.compute.compute_iqms` (masks, N4, mixture, every IQM), not reading the
files. N4 runs on ``--threads`` threads (the app's node uses 2).

Usage: ``python benchmarks/bench_iqms.py [--maps 01 02] [--bias 0 0.3 0.6] [--repeats 3]
[--threads 2] [--out DIR]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import measure, setup_threads, write_report  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _head(map_id: str):
    """A 1 mm label map (256 x 256 x 176) and its affine."""
    import nibabel as nib
    import numpy as np

    path = SHARED / "synthseg_label_maps" / f"training_seg_{map_id}.nii.gz"
    if not path.is_file():
        from bids_qc.synth.phantom import make_phantom

        labels, affine = make_phantom((256, 256, 176), voxel_size=1.0)
        return labels, affine, "analytic phantom"
    img = nib.load(str(path))
    labels = np.asanyarray(img.dataobj).astype(np.int32)[:, :, 40:216]
    affine = img.affine.copy()
    affine[:3, 3] += affine[:3, 2] * 40
    return labels, affine, path.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", nargs="+", default=["01", "02"])
    parser.add_argument("--bias", nargs="+", type=float, default=[0.0, 0.3, 0.6])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    setup_threads(ns.threads)

    import sklearn.mixture  # noqa: F401  (imported once by the app's worker too)

    from bids_qc.iqms.bias import N4Settings
    from bids_qc.iqms.compute import compute_iqms
    from bids_qc.synth import artefacts as art

    n4 = N4Settings(threads=ns.threads)
    results, steps = [], []
    for map_id in ns.maps:
        labels, affine, source = _head(map_id)
        clean = art.t1w_from_labels(labels)
        for amplitude in ns.bias:
            image = art.rician_noise(art.bias_field(clean, amplitude), 12.0, seed=1)
            timings: dict[str, float] = {}
            cpu: list[float] = []

            def run(image=image, labels=labels, affine=affine, timings=timings, cpu=cpu):
                c0 = time.process_time()
                out = compute_iqms(image, affine, labels, n4=n4)
                cpu.append(time.process_time() - c0)
                timings.update(out.timings)
                return out

            stage = f"IQMs, {source}, bias {amplitude:g}"
            result = measure(stage, run, repeats=ns.repeats, warmup=1)
            # CPU seconds of this process: steadier than wall time on a shared machine
            result.note = (f"{'x'.join(map(str, labels.shape))} at 1 mm; CPU "
                           f"{min(cpu[1:] or cpu):.1f} s; N4 on {ns.threads} thread(s)")
            results.append(result)
            steps.append((stage, dict(timings)))
    write_report("iqms", results, ns.out)
    print("\nper step, last repeat (s):")
    for stage, timings in steps:
        print(f"  {stage}: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()
