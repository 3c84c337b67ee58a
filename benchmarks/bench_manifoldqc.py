"""Wall time and peak memory of ManifoldQC: preprocessing, latent search, surrogate export.

Input: a synthetic 256^3, 1 mm image and segmentation (the size of FreeSurfer's
``norm.mgz`` / ``aseg.mgz``) made from the analytic phantom, so no real data is needed.
The search runs its full bound of steps (no early stop) so the time is the worst case;
batch 1 and 16 on the CPU (2 threads), and on the GPU when torch sees one.
Goal (issue 7): under 10 s per image on the CPU, preprocessing and search together.

Usage: ``python benchmarks/bench_manifoldqc.py [--repeats 5] [--out DIR]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import measure, setup_threads, write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    setup_threads(2)

    import numpy as np
    import torch

    from bids_qc.models import manifoldqc as mq
    from bids_qc.models.registry import get_spec
    from bids_qc.synth.phantom import make_phantom

    labels, affine = make_phantom((256, 256, 256), voxel_size=1.0)
    image = np.where(labels > 0, 30 + (labels % 11) * 8, 0).astype(np.float32)
    try:
        get_spec("manifoldqc")
        net, note = mq.load_model("cpu"), "shipped weights"
    except ValueError:  # weights not registered in this checkout: same cost, random weights
        net, note = mq.ManifoldVAE().eval(), "random weights"
    prep = mq.preprocess(image, affine, labels, affine)
    x1 = mq.to_tensor(prep.image, prep.classes)[None]
    x16 = x1.repeat(16, 1, 1, 1, 1)
    steps = mq.SEARCH_STEPS

    def run(x: torch.Tensor, device: str):
        model = net.to(device)

        def fn():
            out = mq.search(model, x.to(device), steps=steps, tol=0.0)
            if device != "cpu":
                torch.cuda.synchronize()
            return out

        return fn

    res = mq.search(net, x1, steps=steps)

    def full():
        p = mq.preprocess(image, affine, labels, affine)
        r = mq.predict([p], model=net)
        return mq.surrogate_to_labels(r.surrogate[0], p.affine, labels.shape, affine)

    results = [
        measure("manifoldqc preprocess (256^3 -> 2 mm crop)",
                lambda: mq.preprocess(image, affine, labels, affine), repeats=ns.repeats),
        measure(f"manifoldqc search cpu, batch 1, {steps} steps", run(x1, "cpu"),
                repeats=ns.repeats, note=note),
        measure(f"manifoldqc search cpu, batch 16, {steps} steps", run(x16, "cpu"), n=16,
                repeats=max(2, ns.repeats // 3), note=note),
        measure("manifoldqc surrogate -> 256^3 grid",
                lambda: mq.surrogate_to_labels(res.surrogate[0], prep.affine, labels.shape,
                                               affine), repeats=ns.repeats),
        measure("manifoldqc per image, cpu (preprocess + search with early stop + export)",
                full, repeats=ns.repeats, note=f"{note}; goal < 10 s"),
    ]  # fmt: skip
    if torch.cuda.is_available():
        for b, x in ((1, x1), (16, x16)):
            results.append(measure(f"manifoldqc search gpu, batch {b}, {steps} steps",
                                   run(x, "cuda"), n=b, repeats=ns.repeats, note=note))
    write_report("bench_manifoldqc", results, ns.out)


if __name__ == "__main__":
    main()
