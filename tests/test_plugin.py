"""A model is one plugin: a toy model, defined only here, shows in every derived place.

ToyQC computes the mean intensity of the T1w and flags it above a threshold. Its plugin
goes into a temporary registry (``PLUGINS + (TOY,)``, passed to the functions that take
``plugins``); no file of bids_qc changes, and the shipped registry does not see it.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nipype.interfaces.base import BaseInterfaceInputSpec, SimpleInterface, TraitedSpec, traits

from bids_qc.cli import build_parser, parse_settings
from bids_qc.group import group_table, to_tsv
from bids_qc.models.plugin import (
    CheckSpec,
    Column,
    QCModel,
    Resources,
    ThresholdOption,
    gated_spec,
)
from bids_qc.models.plugins import PLUGINS, get_plugin
from bids_qc.reports.checks import evaluate, model_check_names
from bids_qc.reports.participant import write_participant_report
from bids_qc.results import stage_result
from bids_qc.schema import COLUMNS, build_columns
from tests.test_reports_helpers import synthetic_result

_DEFAULT = 100.0


class _ToyInputSpec(BaseInterfaceInputSpec):
    qc_input = traits.Dict(mandatory=True, desc="QCInput as a dict")
    classic_result = traits.Dict(desc="the classical stage's result (unused)")
    device = traits.Str("cpu", usedefault=True, desc="torch device (unused)")
    thresholds = traits.Dict(desc="flag thresholds by name (toyqc_mean)")


class _ToyOutputSpec(TraitedSpec):
    result = traits.Dict(desc="stage result")


class ToyMean(SimpleInterface):
    """``toyqc_mean`` (mean T1w intensity) and ``toyqc_flag`` of one image."""

    input_spec = _ToyInputSpec
    output_spec = _ToyOutputSpec

    def _run_interface(self, runtime):
        threshold = float((self.inputs.thresholds or {}).get("toyqc_mean", _DEFAULT))
        mean = float(np.asanyarray(nib.load(self.inputs.qc_input["t1w"]).dataobj).mean())
        metrics = {"toyqc_mean": mean, "toyqc_flag": int(mean > threshold)}
        self._results["result"] = stage_result("toyqc", metrics, [], [], [],
                                               {"model": "toyqc", "threshold": threshold})
        return runtime


TOY = QCModel(
    # No weights: the spec still goes through the gate, which has never measured it.
    spec=gated_spec("toyqc", "0.1.0", "", "", ("t1w",), "Mean T1w intensity (a toy)"),
    title="ToyQC",
    interface=f"{__name__}:ToyMean",
    resources=Resources(mem_gb=0.5, threads=1),
    columns=(Column("toyqc_mean", "float", "", "Mean intensity of the T1w.", "toyqc"),
             Column("toyqc_flag", "flag", "", "1 when toyqc_mean exceeds its threshold.",
                    "toyqc")),
    checks=(CheckSpec("toyqc_flag", "toyqc_mean", "toyqc_mean", "above", _DEFAULT,
                      "intensity (ToyQC mean)"),),
    options=(ThresholdOption("--toyqc-threshold", "toyqc_mean", _DEFAULT, "MEAN",
                             "ToyQC flags an image whose mean intensity exceeds this "
                             "(default 100)"),),
)
PLUS_TOY = (*PLUGINS, TOY)


def _toy_result(name: str, mean: float) -> dict:
    res = synthetic_result(name)
    res["metrics"]["toyqc_mean"] = mean  # no flag written: the check derives it
    return res


def test_the_shipped_registry_does_not_see_the_toy():
    assert TOY.spec.experimental  # never measured on real images: below the gate
    with pytest.raises(ValueError, match="Unknown model 'toyqc'"):
        get_plugin("toyqc")
    assert not any(c.producer == "toyqc" for c in COLUMNS)
    assert "toyqc_flag" not in model_check_names()


def test_its_columns_are_in_the_group_tsv():
    columns = build_columns(PLUS_TOY)
    names = [c.name for c in columns]
    # after every other model's participant columns, before the group-level ones
    assert names.index("toyqc_flag") == names.index("toyqc_mean") + 1
    assert names.index("shapeqc_nflagged") < names.index("toyqc_mean")
    assert names.index("toyqc_flag") < names.index("vol_whole_brain_outlier")
    assert "rz_toyqc_mean" in names  # a numeric metric gets its dataset-relative score
    assert [n for n in names if not n.startswith(("toyqc_", "rz_toyqc_"))] == \
        [c.name for c in COLUMNS]  # nothing else moved

    results = [_toy_result(f"sub-{i:02d}_T1w", 90.0 + 5 * i) for i in range(1, 4)]
    header = to_tsv(group_table(results, columns=columns)).splitlines()[0].split("\t")
    assert header == names
    assert header.index("toyqc_mean") < header.index("rz_reg_cc")


def test_its_threshold_option_is_in_help_and_settings():
    text = " ".join(build_parser(PLUS_TOY).format_help().split())
    assert "--toyqc-threshold MEAN ToyQC flags an image whose mean intensity exceeds" in text
    assert "QC models to run (regqc, segqc, manifoldqc, shapeqc, vinn, toyqc)" in text
    assert "--toyqc-threshold" not in build_parser().format_help()

    argv = ["/bids", "/out", "participant", "--models", "toyqc"]
    settings = parse_settings([*argv, "--toyqc-threshold", "42"], PLUS_TOY)
    assert settings.models == ("toyqc",) and settings.thresholds["toyqc_mean"] == 42.0
    assert parse_settings(argv, PLUS_TOY).thresholds["toyqc_mean"] == _DEFAULT


def test_its_check_is_in_the_report(tmp_path):
    res = _toy_result("sub-01_T1w", 150.0)
    outcome = next(o for o in evaluate(res, PLUS_TOY) if o.spec.flag == "toyqc_flag")
    assert (outcome.value, outcome.threshold, outcome.flag) == (150.0, _DEFAULT, 1)
    assert outcome.ratio == pytest.approx(1.5)
    assert "toyqc_flag" not in {o.spec.flag for o in evaluate(res)}

    html = write_participant_report(res, tmp_path, plugins=PLUS_TOY).read_text()
    summary = html.split('id="registration"')[0]
    row = next(r for r in summary.split("<tr>") if "<code>toyqc_flag</code>" in r)
    assert "intensity (ToyQC mean)" in row and "150.000" in row and "&gt; 100.000" in row
    assert 'class="badge fail"' in row


def test_its_interface_runs_and_its_node_gets_its_resources(tmp_path):
    from bids_qc.inputs import QCInput
    from bids_qc.workflows.base import init_image_qc_wf

    t1w = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 120.0, np.float32), np.eye(4)), t1w)
    stage = TOY.interface_class()(qc_input={"t1w": str(t1w)}, thresholds={}).run()
    assert stage.outputs.result["metrics"] == {"toyqc_mean": 120.0, "toyqc_flag": 1}

    row = QCInput(bids_name="sub-01_T1w", entities={"subject": "01"}, t1w=t1w)
    wf = init_image_qc_wf(row, output_dir=tmp_path / "out", fingerprint={},
                          models=(TOY.spec,), device="cpu", plugins=PLUS_TOY)
    node = wf.get_node("toyqc")
    assert isinstance(node.interface, ToyMean)
    assert (node.mem_gb, node.n_procs) == (0.5, 1)
