"""Progress a person can watch: a bar on a terminal, a line per image elsewhere."""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace

from bids_qc.progress import Progress


def _node(workflow: str, name: str, out_json: str | None = None) -> SimpleNamespace:
    outputs = SimpleNamespace(out_json=out_json) if out_json else None
    return SimpleNamespace(fullname=f"bids_qc_wf.{workflow}.{name}", name=name,
                           result=SimpleNamespace(outputs=outputs))


def _result(tmp_path, name: str, metrics: dict) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"bids_name": name, "metrics": metrics, "provenance": {}}))
    return str(path)


def test_plain_lines_start_at_the_first_node_and_end_with_time_and_verdict(tmp_path, caplog):
    names = {"wf_a": "sub-01_T1w", "wf_b": "sub-02_T1w"}
    progress = Progress(names, tmp_path, bar=False)
    good = _result(tmp_path, "a", {"regqc_rmse_mm": 2.0, "regqc_flag": 0})
    bad = _result(tmp_path, "b", {"regqc_rmse_mm": 25.0, "regqc_flag": 1})
    with caplog.at_level(logging.INFO, logger="bids_qc"):
        progress(_node("wf_a", "vinn"), "start")      # raw data: VINN runs first
        progress(_node("wf_a", "classic"), "start")   # not a second "started"
        progress(_node("wf_a", "write_results", good), "end")
        progress(_node("wf_b", "register"), "start")
        progress(_node("wf_b", "write_results", bad), "end")
        progress(_node("other", "write_results", bad), "end")   # not an image's workflow
    lines = [r.getMessage() for r in caplog.records]
    assert sum("started sub-01_T1w" in line for line in lines) == 1
    assert any(line.startswith("[1/2] done sub-01_T1w in ") and line.endswith(
        ": PASS (failures so far: 0)") for line in lines), lines
    assert any("[2/2] done sub-02_T1w" in line and "flagged: regqc_flag" in line
               for line in lines), lines
    assert progress.done == 2


def test_an_image_no_check_could_run_is_not_called_pass(tmp_path, caplog):
    progress = Progress({"wf_a": "sub-09_T1w"}, tmp_path, bar=False)
    skipped = _result(tmp_path, "a", {"reg_cc": None, "reg_cc_flag": None,
                                      "regqc_rmse_mm": None, "regqc_flag": None})
    with caplog.at_level(logging.INFO, logger="bids_qc"):
        progress(_node("wf_a", "classic"), "start")
        progress(_node("wf_a", "write_results", skipped), "end")
    lines = [r.getMessage() for r in caplog.records]
    assert any("done sub-09_T1w" in line and "not checked: every check skipped" in line
               for line in lines), lines
    assert not any(": PASS" in line for line in lines), lines


def test_the_bar_counts_images_and_failures(tmp_path, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    progress = Progress({"wf_a": "sub-01_T1w", "wf_b": "sub-02_T1w"}, tmp_path, bar=True)
    progress(_node("wf_a", "classic"), "start")
    progress(_node("wf_a", "write_results", _result(tmp_path, "a", {})), "end")
    progress(_node("wf_b", "classic"), "start")
    progress(_node("wf_b", "segqc"), "exception")
    assert progress.bar.n == 2 and progress.failed == 1
    progress.close()
    text = stream.getvalue()
    assert "2/2" in text and "failed 1" in text and "image" in text


def test_stage_seconds_reach_the_run_log_and_the_provenance(tmp_path, monkeypatch):
    from bids_qc.progress import stamp_stage_seconds

    clock = iter([10.0, 10.0, 12.5, 12.5, 13.0])
    monkeypatch.setattr("bids_qc.progress.time.monotonic", lambda: next(clock))
    progress = Progress({"wf_a": "sub-01_T1w"}, tmp_path, bar=False)
    progress(_node("wf_a", "classic"), "start")
    progress(_node("wf_a", "classic"), "end")
    progress(_node("wf_a", "segqc"), "start")
    assert progress.seconds == {"sub-01_T1w": {"classic": 2.5}}
    row = SimpleNamespace(bids_name="sub-01_T1w", entities={"subject": "01", "suffix": "T1w"},
                          subject="01", session=None, datatype="anat")
    monkeypatch.setattr("bids_qc.progress.result_path", lambda out, r: out / "r.json")
    (tmp_path / "r.json").write_text(json.dumps({"metrics": {}, "provenance": {"a": 1}}))
    stamp_stage_seconds(tmp_path, [row], progress.seconds, started=0.0)
    stored = json.loads((tmp_path / "r.json").read_text())
    assert stored["provenance"] == {"a": 1, "stage_seconds": {"classic": 2.5}}


def test_phases_add_up_in_order(monkeypatch):
    from bids_qc.progress import Phases

    clock = iter([0.0, 1.0, 3.5, 4.0, 4.25])
    monkeypatch.setattr("bids_qc.progress.time.monotonic", lambda: next(clock))
    phases = Phases()
    phases.mark("index")
    phases.mark("run")
    phases.mark("collect")
    phases.mark("run")     # a phase marked twice adds up
    assert phases.seconds == {"index": 1.0, "run": 2.75, "collect": 0.5}
    assert list(phases.seconds) == ["index", "run", "collect"]
