"""Features of the frozen ShapeQC test sets (``shapeqc_synth``, ``shapeqc_unseen``), cached.

Each case of :mod:`bids_qc.training.eval_protocol` is a synthesized whole-head case (1 mm) with
one structure damaged; only its label map matters here. Building a case costs seconds
(synthesis of the whole head), so cases are cached one file each and built in index order,
alternating the two sets: a partial build covers every structure evenly (case ``i`` damages
structure ``(i // 2) % 14``). ``python -m bids_qc.training.shapeqc_frozen --cache DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bids_qc.models.shape_features import ShapeTemplate
from bids_qc.models.shapeqc import kind_of
from bids_qc.training.eval_protocol import build_case, case_specs
from bids_qc.training.shapeqc_data import cached_axes, shape_record

FROZEN_SETS: tuple[str, ...] = ("shapeqc_synth", "shapeqc_unseen")


def build_frozen(cache: Path, stop: int | None = None,
                 log: Callable[[str], None] = print) -> None:
    """Build the cached records of both frozen sets (resumable)."""
    axes = cached_axes(cache, log)
    n = max(len(case_specs(s)) for s in FROZEN_SETS)
    for i in range(n if stop is None else min(n, stop)):
        for name in FROZEN_SETS:
            specs = case_specs(name)
            if i >= len(specs):
                continue
            spec = specs[i]
            path = cache / name / f"case{i:04d}.npz"
            if path.is_file():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            case = build_case(spec)
            template = ShapeTemplate(np.zeros((1, 1)), 0.0, axes[kind_of(spec.structure)])
            meta = {"structure": spec.structure, "family": spec.failure_family,
                    "severity": spec.severity, "fail": bool(case.truth["fail"]),
                    "dice": float(case.truth["dice"]),
                    "hausdorff": float(min(case.truth["hausdorff"], 1e3))}
            try:
                rec = shape_record(case.labels, case.affine, spec.structure, template)
            except ValueError as exc:  # nothing left to mesh: an obvious FAIL with no map
                rec = {"error": str(exc)}
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, meta=json.dumps(meta), **rec)
            os.replace(tmp, path)
            log(f"{name} {i}: {spec.structure} {spec.failure_family} fail={meta['fail']} "
                f"{time.time() - t0:.1f}s")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--stop", type=int, default=None, help="build cases 0..stop-1 only")
    ns = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    build_frozen(ns.cache, ns.stop, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
