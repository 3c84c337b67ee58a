"""Wall time and peak memory of RegQC: preprocessing and network separately.

Input: the 1 mm MNI152NLin2009cAsym template itself (193x229x193) stands in for a
template-space T1w, so no real data is needed. Network: batch 1 and 16 on the CPU
(2 threads), and on the GPU when torch sees one.

Usage: ``python benchmarks/bench_regqc.py [--repeats 10] [--out DIR]``
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

    import torch

    from bids_qc.models.regqc import RegQCNet, load_model, preprocess
    from bids_qc.spatial import load_template
    from bids_qc.templates_data import get_template

    grid = load_template(get_template("MNI152NLin2009cAsym"))
    image = grid.data.copy()
    try:
        net, note = load_model("cpu"), "shipped weights"
    except ValueError:  # weights not registered in this checkout: same cost, random weights
        net, note = RegQCNet().eval(), "random weights"
    x1 = preprocess(image, grid)[None]
    x16 = x1.repeat(16, 1, 1, 1, 1)

    def run(batch: torch.Tensor, model: RegQCNet, device: str):
        def fn():
            with torch.no_grad():
                out = model(batch.to(device))
                if device != "cpu":
                    torch.cuda.synchronize()
            return out

        return fn

    results = [
        measure("regqc preprocess (1 mm template grid -> 4 mm)",
                lambda: preprocess(image, grid), repeats=ns.repeats),
        measure("regqc network cpu, batch 1", run(x1, net, "cpu"), repeats=ns.repeats,
                note=note),
        measure("regqc network cpu, batch 16", run(x16, net, "cpu"), n=16,
                repeats=max(2, ns.repeats // 4), note=note),
    ]  # fmt: skip
    if torch.cuda.is_available():
        gpu = net.to("cuda")
        for b, x in ((1, x1), (16, x16)):
            results.append(measure(f"regqc network gpu, batch {b}", run(x, gpu, "cuda"), n=b,
                                   repeats=ns.repeats, note=note))  # fmt: skip
    write_report("bench_regqc", results, ns.out)


if __name__ == "__main__":
    main()
