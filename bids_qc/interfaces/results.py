"""nipype interface that writes one image's participant JSON and HTML report, atomically."""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, SimpleInterface, TraitedSpec, traits

from ..inputs import qc_input_from_dict
from ..io import atomic_write_json
from ..outputs import result_path
from ..reports.participant import write_participant_report
from ..results import assemble, stage_result
from ..sink import publish, retarget


class _WriteResultsInputSpec(BaseInterfaceInputSpec):
    qc_input = traits.Dict(mandatory=True, desc="QCInput as a dict")
    stage_results = traits.List(traits.Dict, mandatory=True, desc="one result per stage")
    fingerprint = traits.Dict(mandatory=True, desc="what the result depends on (resume)")
    device = traits.Str(mandatory=True, desc="torch device the models ran on")
    output_dir = traits.Str(mandatory=True, desc="the output dataset")
    skipped_models = traits.List(traits.Dict, desc="models skipped for the whole run")
    verbose_reports = traits.Bool(
        False, usedefault=True, desc="embed every Grad-CAM rendering, not only flagged ones"
    )


class _WriteResultsOutputSpec(TraitedSpec):
    out_json = traits.Str(desc="the participant JSON")
    out_report = traits.Str(desc="the participant HTML report")


class WriteResults(SimpleInterface):
    """Merge the stage results into ``<bids_name>.json`` and write its report."""

    input_spec = _WriteResultsInputSpec
    output_spec = _WriteResultsOutputSpec

    def _run_interface(self, runtime):
        row = qc_input_from_dict(self.inputs.qc_input)
        output_dir = Path(self.inputs.output_dir)
        # Plain JSON types: traits hands over its own dict/list subclasses.
        stages = json.loads(json.dumps(list(self.inputs.stage_results)))
        # The sink: the other nodes' files reach OUTPUT_DIR here, and every work-dir path
        # in the stages and the row becomes the published one (see bids_qc.sink).
        published = publish(stages, output_dir)
        stages = retarget(stages, published)
        qc_input = retarget(json.loads(json.dumps(dict(self.inputs.qc_input))), published)
        if self.inputs.skipped_models:
            stages.append(stage_result("models", {}, [], [], list(self.inputs.skipped_models)))
        result = assemble(qc_input, stages, dict(self.inputs.fingerprint), self.inputs.device)
        out_json = result_path(output_dir, row)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        # The report first: the JSON is what marks an image as done for a rerun. It gets the
        # stage results with their internal keys (work-dir files such as the template-space
        # T1w) and the row's inputs, to draw figures; the JSON (assemble) drops those keys.
        report = write_participant_report(
            result,
            output_dir,
            stages=stages,
            qc_input=qc_input,
            verbose=bool(self.inputs.verbose_reports),
        )
        atomic_write_json(out_json, result)
        self._results["out_json"] = str(out_json)
        self._results["out_report"] = str(report)
        return runtime
