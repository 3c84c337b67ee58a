"""Wall time and peak memory of SegQC: preprocessing and network separately.

Input: a synthetic 256^3, 1 mm image and segmentation (the size of FreeSurfer's
``norm.mgz`` / ``aseg.mgz``) made from the analytic phantom, so no real data is needed.
Network: batch 1 and 16 on the CPU (2 threads), and on the GPU when torch sees one.

Usage: ``python benchmarks/bench_segqc.py [--repeats 10] [--out DIR]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import measure, setup_threads, write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    setup_threads(2)

    import numpy as np
    import torch

    from bids_qc.models.registry import get_spec
    from bids_qc.models.segqc import SegQCNet, load_model, preprocess
    from bids_qc.synth.phantom import make_phantom

    labels, affine = make_phantom((256, 256, 256), voxel_size=1.0)
    image = np.where(labels > 0, 30 + (labels % 11) * 8, 0).astype(np.float32)
    try:
        get_spec("segqc")
        net, note = load_model("cpu"), "shipped weights"
    except ValueError:  # weights not registered in this checkout: same cost, random weights
        net, note = SegQCNet().eval(), "random weights"
    x1 = preprocess(image, affine, labels, affine)[None]
    x16 = x1.repeat(16, 1, 1, 1, 1)

    def run(batch: torch.Tensor, model: SegQCNet, device: str):
        def fn():
            with torch.no_grad():
                out = model(batch.to(device))
                if device != "cpu":
                    torch.cuda.synchronize()
            return out

        return fn

    results = [
        measure("segqc preprocess (256^3 -> 2 mm box)",
                lambda: preprocess(image, affine, labels, affine), repeats=ns.repeats),
        measure("segqc network cpu, batch 1", run(x1, net, "cpu"), repeats=ns.repeats,
                note=note),
        measure("segqc network cpu, batch 16", run(x16, net, "cpu"), n=16,
                repeats=max(2, ns.repeats // 4), note=note),
    ]  # fmt: skip
    if torch.cuda.is_available():
        gpu = net.to("cuda")
        for b, x in ((1, x1), (16, x16)):
            results.append(measure(f"segqc network gpu, batch {b}", run(x, gpu, "cuda"), n=b,
                                   repeats=ns.repeats, note=note))  # fmt: skip
    write_report("bench_segqc", results, ns.out)


if __name__ == "__main__":
    main()
