"""Per-stage wall time and peak memory of the bids_qc pipeline on N demo images.

Stages: indexing (pybids walk), loading and conforming (into template space), the classical
metrics, the participant report, and the group level. Each QC model adds its own stages
(preprocessing and network separately) as it lands.

Usage: ``python benchmarks/bench_pipeline.py [--n 4] [--repeats 10] [--out DIR]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import measure, setup_threads, write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4, help="images in the demo dataset")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    setup_threads(2)

    import numpy as np

    from bids_qc.bids import collect_inputs
    from bids_qc.cli import run
    from bids_qc.demo import SUBJECTS, DemoSubject, build_dataset
    from bids_qc.group import write_group_outputs
    from bids_qc.inputs import qc_input_to_dict
    from bids_qc.interfaces.classic import ClassicMetrics
    from bids_qc.io import load_labels
    from bids_qc.models.classic import registration_metrics, structure_volumes
    from bids_qc.reports.participant import write_participant_report
    from bids_qc.results import assemble
    from bids_qc.settings import Settings
    from bids_qc.spatial import load_template, to_template_space
    from bids_qc.templates_data import DEFAULT_SPACE, get_template

    tmp = Path(tempfile.mkdtemp(prefix="bids_qc_bench_"))
    subjects = [DemoSubject(f"{i + 1:02d}", SUBJECTS[i % len(SUBJECTS)].derivative)
                for i in range(ns.n)]
    bids, _ = build_dataset(tmp, subjects)
    out = tmp / "out"
    settings = Settings(bids_dir=bids, output_dir=out, analysis_level="participant")
    rows = collect_inputs(settings)
    grid = load_template(get_template(DEFAULT_SPACE))
    results = []

    def conform_all():
        return [to_template_space(r, grid)[0] for r in rows]

    conformed = conform_all()

    def classic_all():
        for data, row in zip(conformed, rows, strict=True):
            registration_metrics(data, grid.data, grid.mask)
            seg = load_labels(row.seg).img
            structure_volumes(np.asanyarray(seg.dataobj), float(np.prod(seg.header.get_zooms())))

    def interface_all():
        for row in rows:
            node = ClassicMetrics(qc_input=qc_input_to_dict(row))
            results.append(node.run(cwd=str(tmp / "work")).outputs.result)

    (tmp / "work").mkdir(parents=True, exist_ok=True)
    interface_all()
    out.mkdir(parents=True, exist_ok=True)
    jsons = [assemble(qc_input_to_dict(r), [res], {"inputs": {}, "models": {}}, "cpu")
             for r, res in zip(rows, results, strict=True)]

    def reports_all():  # with figures, as the WriteResults node draws them
        for res, stage, row in zip(jsons, results, rows, strict=True):
            write_participant_report(res, out, stages=[stage], qc_input=qc_input_to_dict(row))

    def write_jsons():
        import json

        for res, row in zip(jsons, rows, strict=True):
            path = out / f"sub-{row.subject}" / "anat" / f"{row.bids_name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(res))

    write_jsons()
    n = len(rows)
    stages = [
        measure("indexing", lambda: collect_inputs(settings), n=n, repeats=ns.repeats),
        measure("load + conform to template", conform_all, n=n, repeats=ns.repeats),
        measure("classic metrics (maths)", classic_all, n=n, repeats=ns.repeats),
        measure("classic node (load+conform+maths)", interface_all, n=n, repeats=ns.repeats),
        measure("participant reports", reports_all, n=n, repeats=ns.repeats),
        measure("group level", lambda: write_group_outputs(out), n=n, repeats=ns.repeats),
        measure("bids_qc participant end to end (nipype, all installed models)",
                lambda: run([str(bids), str(tmp / "e2e"), "participant", "--force", "-q",
                             "--nprocs", "2"]),
                n=n, repeats=max(1, ns.repeats // 3), note="includes nipype start-up"),
    ]
    write_report("pipeline", stages, ns.out)


if __name__ == "__main__":
    main()
