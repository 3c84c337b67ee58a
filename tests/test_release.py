"""Release quality: the version everywhere it belongs, and the messages users meet most.

One tiny participant run (two subjects with fMRIPrep-style derivatives, one of them with
annexed files whose content was never fetched) serves the version and annex checks.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from pathlib import Path

import pytest
import torch

from bids_qc import __version__, device, schema
from bids_qc.cli import run

from .fakebids import add_fmriprep, annex, make_raw

ROOT = Path(__file__).resolve().parents[1]
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?")


def test_version_is_semantic_and_is_the_changelog_newest_release():
    assert SEMVER.fullmatch(__version__), __version__
    text = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[([^\]]+)\] - (\d{4}-\d{2}-\d{2})$", text, re.MULTILINE)
    assert releases, "CHANGELOG.md lists no release as '## [X.Y.Z] - YYYY-MM-DD'"
    assert releases[0][0] == __version__, (
        f"bids_qc.__version__ is {__version__} but the newest release in CHANGELOG.md is "
        f"{releases[0][0]}"
    )
    assert all(SEMVER.fullmatch(v) for v, _ in releases)
    assert text.index("## [Unreleased]") < text.index(f"## [{__version__}]")


def test_version_option_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        run(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"bids_qc {__version__}\n"


@pytest.fixture(scope="module")
def annexed_run(tmp_path_factory):
    """Participant level on sub-01 (annexed derivatives, not fetched) and sub-02 (raw only)."""
    root = tmp_path_factory.mktemp("release") / "ds"
    make_raw(root, ["01", "02"])
    fmriprep = add_fmriprep(root, ["01"])  # sub-02: raw only, nothing to compute (fast)
    for path in (fmriprep / "sub-01" / "anat").glob("*desc-preproc_T1w.nii.gz"):
        annex(path)
    linear = root.parent / "linear.yml"
    linear.write_text("plugin: Linear\n")
    out = root / "derivatives" / "bids_qc"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run([str(root), str(out), "participant", "--plugin-config", str(linear)])
    return root, out, code, err.getvalue()


def test_outputs_carry_the_version(annexed_run):
    _, out, _, _ = annexed_run
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Name"] == "bids_qc"
    assert description["GeneratedBy"][0]["Version"] == __version__
    result = json.loads((out / "sub-02" / "anat" / "sub-02_T1w.json").read_text())
    assert result["qc_error"] == ""
    assert result["provenance"]["bids_qc_version"] == __version__
    assert result["provenance"]["fingerprint"]["bids_qc_version"] == __version__
    # docs/outputs.md documents exactly these keys, in this order.
    assert list(result) == [k for k, _ in schema.JSON_KEYS]
    assert list(result["provenance"]) == [k for k, _ in schema.PROVENANCE_KEYS]


def test_unfetched_annexed_inputs_say_datalad_get(annexed_run):
    root, out, code, stderr = annexed_run
    assert code == 1  # one image failed, the other finished
    failed = [ln for ln in stderr.splitlines() if ln.startswith("  FAILED ")]
    assert len(failed) == 1 and "sub-01_T1w" in failed[0]
    assert "annexed file whose content is not present" in failed[0]
    hints = [ln for ln in stderr.splitlines() if ln.startswith("  hint: ")]
    assert len(hints) == 1 and "`datalad get" in hints[0] and str(root) in hints[0]
    errors = json.loads((out / "sub-01" / "anat" / "sub-01_T1w.json").read_text())["errors"]
    assert errors and all("datalad get" in e["hint"] and e["file"] for e in errors)


def test_no_hint_when_nothing_is_annexed():
    from bids_qc.runner import _failure_hints

    assert _failure_hints(None, {"sub-03_T1w": "classic: x.nii.gz is an empty file"}) == []


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.mark.parametrize(
    ("cuda", "visible", "expected"),
    [
        (None, None, "is a CPU-only build"),
        ("12.1", "", "CUDA_VISIBLE_DEVICES='' hides every GPU"),
        ("12.1", None, "--nv"),
    ],
)
def test_gpu_not_seen_says_why(no_gpu, monkeypatch, caplog, cuda, visible, expected):
    monkeypatch.setattr(torch.version, "cuda", cuda)
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(ValueError, match="--device cuda: torch sees no GPU") as exc:
        device.resolve_device("cuda")
    assert expected in str(exc.value) and "--device cpu" in str(exc.value)
    with caplog.at_level(logging.INFO, logger="bids_qc"):
        assert device.resolve_device("auto") == "cpu"
    assert expected in caplog.text


def test_bad_gpu_index_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="sees 1 GPU"):
        device.resolve_device("cuda:1")
    with pytest.raises(ValueError, match="must be a number"):
        device.resolve_device("cuda:x")
    assert device.resolve_device("cuda:0") == "cuda:0"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_gpu_exits_64_with_the_reason(tmp_path, capsys):
    make_raw(tmp_path / "ds", ["01"])
    code = run([str(tmp_path / "ds"), str(tmp_path / "out"), "participant", "--device", "cuda"])
    assert code == 64
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("bids_qc: error: --device cuda: torch sees no GPU: ")
    assert device.why_no_gpu() in err
