"""CPU time of ShapeQC on one subject: features of the 14 structures, and the network with
Grad-CAM (goal: under 5 s for all 14 structures).

Input: FreeSurfer's ``bert`` aseg (256^3, 1 mm) from the shared data folder when present,
else the analytic phantom (same size). Network: the shipped weights when registered, else
random weights of the same size.

Usage: ``python benchmarks/bench_shapeqc.py [--repeats 3] [--out DIR]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import measure, setup_threads, write_report  # noqa: E402


def load_subject():
    """(labels, affine, name) of the benchmark subject."""
    import numpy as np

    try:
        from bids_qc.synth.labelmaps import load_bert

        img = load_bert("aseg")
        return np.rint(np.asarray(img.dataobj)).astype(np.int32), img.affine, "bert aseg"
    except (FileNotFoundError, ValueError):
        from bids_qc.synth.phantom import make_phantom

        labels, affine = make_phantom((256, 256, 256), voxel_size=1.0)
        return labels, affine, "phantom"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    setup_threads(1)

    from bids_qc.models.shapeqc import ShapeQCNet, predict, shipped_model

    labels, affine, name = load_subject()
    try:
        net, note = shipped_model(), f"shipped weights, {name}"
    except ValueError:
        net, note = ShapeQCNet().eval(), f"random weights, {name}"
    results = [
        measure("shapeqc 14 structures (features + network + Grad-CAM), 1 thread",
                lambda: predict(net, labels, affine), repeats=ns.repeats, note=note),
    ]
    write_report("bench_shapeqc", results, ns.out)


if __name__ == "__main__":
    main()
