"""Wall and CPU time of VINN segmenting a 1 mm image (goal: under 60 s on the CPU).

Input: the analytic phantom on a 176 x 208 x 176 grid of 1 mm voxels (a head-sized field of
view; the real data is not needed). Also reports the process CPU time of one run, which is
less sensitive to other jobs on a shared machine than the wall time. GPU: measured when torch
sees one (the goal there is under 5 s); otherwise the table says it was not measured.

Usage: ``python benchmarks/bench_vinn.py [--repeats 2] [--threads 2] [--out DIR]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import measure, setup_threads, write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    setup_threads(ns.threads)

    import numpy as np
    import torch

    from bids_qc.models.vinn import VINN, load_model, segment_array
    from bids_qc.synth.phantom import make_phantom

    labels, affine = make_phantom((176, 208, 176), voxel_size=1.0)
    image = np.where(labels > 0, 30 + (labels % 11) * 8, 0).astype(np.float32)
    try:
        model, note = load_model("cpu"), "shipped weights"
    except ValueError:  # weights not registered in this checkout: same cost
        model, note = VINN().eval(), "random weights"
    c0 = time.process_time()
    segment_array(model, image, affine)
    cpu = time.process_time() - c0
    print(f"VINN, 1 mm 176x208x176 phantom: {cpu:.1f} s process CPU time "
          f"({ns.threads} threads; goal < 60 s of wall time on the CPU)")
    results = [
        measure(f"vinn segment 1 mm, cpu ({ns.threads} threads)",
                lambda: segment_array(model, image, affine), repeats=ns.repeats, warmup=0,
                note=f"{note}; one run took {cpu:.1f} s of process CPU time"),
    ]  # fmt: skip
    if torch.cuda.is_available():
        gpu = model.to("cuda")
        results.append(measure("vinn segment 1 mm, gpu",
                               lambda: segment_array(gpu, image, affine, device="cuda"),
                               repeats=ns.repeats, note=note))  # fmt: skip
    else:
        print("GPU: not measured (torch sees no GPU)")
    write_report("bench_vinn", results, ns.out)


if __name__ == "__main__":
    main()
