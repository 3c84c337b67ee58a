"""The BIDS-Apps command-line contract: every exit code, option parsing, output rules."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bids_qc import exitcodes
from bids_qc.cli import parse_settings, run
from tests.fakebids import add_freesurfer, make_raw, tiny_t1w


@pytest.fixture
def linear_config(tmp_path) -> str:
    """A --plugin-config running nipype in-process (fast for unit tests)."""
    path = tmp_path / "linear.yml"
    path.write_text("plugin: Linear\nplugin_args: {}\n")
    return str(path)


def _fs_dataset(root: Path, subjects=("01", "02")) -> Path:
    make_raw(root, subjects)
    for s in subjects:
        add_freesurfer(root, s)
    return root


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and "bids_qc" not in p.parts}


def test_ok_participant_and_group_and_nothing_written_into_bids(tmp_path, linear_config,
                                                               capsys):
    bids = _fs_dataset(tmp_path / "ds")
    before = _tree(bids)
    out = bids / "derivatives" / "bids_qc"
    assert run([str(bids), str(out), "participant", "--plugin-config", linear_config]) == 0
    assert run([str(bids), str(out), "group"]) == 0
    assert _tree(bids) == before, "bids_qc wrote into BIDS_DIR outside OUTPUT_DIR"
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "bids_qc"
    assert (out / ".bidsignore").is_file()
    for s in ("01", "02"):
        res = json.loads((out / f"sub-{s}" / "anat" / f"sub-{s}_T1w.json").read_text())
        assert res["seg_source"] == "freesurfer" and res["qc_error"] == ""
        assert res["metrics"]["vol_left_hippocampus"] > 0
        assert (out / f"sub-{s}_T1w.html").is_file()
    err = capsys.readouterr().err
    assert "2 image(s) selected, 2 processed" in err and "outputs:" in err


def test_some_image_failed_is_exit_1_and_others_finish(tmp_path, linear_config, capsys):
    bids = _fs_dataset(tmp_path / "ds")
    aseg = bids / "derivatives" / "freesurfer" / "sub-02" / "mri" / "aseg.mgz"
    aseg.write_bytes(b"")
    out = tmp_path / "out"
    assert run([str(bids), str(out), "participant", "--plugin-config", linear_config]) == 1
    good = json.loads((out / "sub-01" / "anat" / "sub-01_T1w.json").read_text())
    bad = json.loads((out / "sub-02" / "anat" / "sub-02_T1w.json").read_text())
    assert good["qc_error"] == ""
    assert "aseg.mgz" in bad["qc_error"] and bad["metrics"]["vol_left_hippocampus"] is None
    assert bad["metrics"]["reg_cc"] is not None  # the registration stage still ran
    assert "FAILED sub-02_T1w" in capsys.readouterr().err


def test_invalid_bids_is_16(tmp_path):
    bids = make_raw(tmp_path / "ds", ["01"], description=False)
    assert run([str(bids), str(tmp_path / "out"), "participant"]) == exitcodes.INVALID_BIDS
    assert run([str(tmp_path / "absent"), str(tmp_path / "out"), "participant"]) == 16


def test_unknown_level_is_17(tmp_path, capsys):
    bids = make_raw(tmp_path / "ds", ["01"])
    assert run([str(bids), str(tmp_path / "out"), "subject"]) == exitcodes.UNKNOWN_LEVEL
    assert "participant or group" in capsys.readouterr().err


def test_nothing_selected_is_18_and_lists_labels(tmp_path, capsys):
    bids = make_raw(tmp_path / "ds", ["01", "02"])
    code = run([str(bids), str(tmp_path / "out"), "participant", "--participant-label", "99"])
    assert code == exitcodes.NOTHING_SELECTED
    err = capsys.readouterr().err
    assert "01" in err and "02" in err


@pytest.mark.parametrize("extra", [
    ["--no-such-option"],
    ["--nprocs", "0"],
    ["--models", "magicqc"],
    ["--seg-source", "spm"],
])
def test_usage_errors_are_64(tmp_path, extra, capsys):
    bids = make_raw(tmp_path / "ds", ["01"])
    assert run([str(bids), str(tmp_path / "out"), "participant", *extra]) == exitcodes.USAGE
    assert "bids_qc: error:" in capsys.readouterr().err


def test_output_inside_bids_is_refused_with_64(tmp_path):
    bids = make_raw(tmp_path / "ds", ["01"])
    assert run([str(bids), str(bids), "participant"]) == exitcodes.USAGE
    assert run([str(bids), str(bids / "qc"), "participant"]) == exitcodes.USAGE
    assert not (bids / "qc").exists()


@pytest.mark.parametrize("description", [
    {"Name": "fMRIPrep outputs", "DatasetType": "derivative",
     "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}]},
    {"Name": "old-style", "PipelineDescription": {"Name": "fmriprep"}},
    {"Name": "a raw dataset", "BIDSVersion": "1.9.0"},
])
def test_output_in_another_pipelines_dataset_is_refused_with_64(tmp_path, capsys,
                                                                 description):
    bids = make_raw(tmp_path / "ds", ["01"])
    other = bids / "derivatives" / "fmriprep"
    other.mkdir(parents=True)
    (other / "dataset_description.json").write_text(json.dumps(description))
    before = _tree(other)
    for level in ("participant", "group"):
        assert run([str(bids), str(other), level]) == exitcodes.USAGE
        err = capsys.readouterr().err
        assert str(other) in err and "derivatives/bids_qc" in err
    assert _tree(other) == before


def test_output_of_an_earlier_bids_qc_run_is_reused(tmp_path):
    from bids_qc.cli import _check_output_dir
    from bids_qc.outputs import init_output_dir

    bids = make_raw(tmp_path / "ds", ["01"])
    out = bids / "derivatives" / "bids_qc"
    init_output_dir(out, bids)
    _check_output_dir(bids, out)  # no UsageError
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "dataset_description.json").write_text(
        json.dumps({"PipelineDescription": {"Name": "bids_qc"}}))
    _check_output_dir(bids, legacy)


def test_bad_filter_file_is_64(tmp_path):
    bids = make_raw(tmp_path / "ds", ["01"])
    bad = tmp_path / "filter.json"
    bad.write_text("{nope")
    args = [str(bids), str(tmp_path / "out"), "participant", "--bids-filter-file", str(bad)]
    assert run(args) == exitcodes.USAGE


def test_no_readable_image_is_65(tmp_path, linear_config, capsys):
    bids = _fs_dataset(tmp_path / "ds", ("01",))
    mri = bids / "derivatives" / "freesurfer" / "sub-01" / "mri"
    for name in ("aseg.mgz", "norm.mgz"):
        (mri / name).write_bytes(b"")
    out = tmp_path / "out"
    code = run([str(bids), str(out), "participant", "--plugin-config", linear_config])
    assert code == exitcodes.DATA_ERROR
    assert "no selected image could be read" in capsys.readouterr().err


def test_no_t1w_and_empty_group_are_66(tmp_path):
    bids = make_raw(tmp_path / "ds", [])
    assert run([str(bids), str(tmp_path / "out"), "participant"]) == exitcodes.NO_INPUT
    (tmp_path / "empty").mkdir()
    assert run([str(bids), str(tmp_path / "empty"), "group"]) == exitcodes.NO_INPUT


def test_unwritable_output_is_73(tmp_path):
    bids = make_raw(tmp_path / "ds", ["01"])
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    code = run([str(bids), str(blocker / "out"), "participant"])
    assert code == exitcodes.CANT_CREATE


def test_label_forms_and_label_file(tmp_path):
    bids = make_raw(tmp_path / "ds", ["01", "02"])
    labels = tmp_path / "labels.txt"
    labels.write_text("sub-01\n02\n\n")
    s = parse_settings([str(bids), str(tmp_path / "o"), "participant",
                        "--participant-label-file", str(labels), "--session-label", "ses-A",
                        "B"])
    assert s.participant_label == ("01", "02")
    assert s.session_label == ("A", "B")
    assert s.plugin == "MultiProc" and s.plugin_args["n_procs"] >= 1
    s = parse_settings([str(bids), str(tmp_path / "o"), "participant", "--participant-label",
                        "sub-02", "01", "sub-02"])
    assert s.participant_label == ("02", "01")


def test_a_label_is_a_label_even_where_a_file_has_its_name(tmp_path, monkeypatch, capsys):
    # As in fMRIPrep: `--participant-label 01` means sub-01, whatever the working directory
    # holds; a file of labels is read only when --participant-label-file names it.
    bids = make_raw(tmp_path / "ds", ["01", "02"])
    monkeypatch.chdir(tmp_path)
    Path("01").write_text("02\n")
    s = parse_settings([str(bids), str(tmp_path / "o"), "participant", "--participant-label",
                        "01"])
    assert s.participant_label == ("01",)
    # A value that cannot be a label but names a file: say how to read it as labels.
    Path("labels.txt").write_text("01\n")
    assert run([str(bids), str(tmp_path / "o"), "participant", "--participant-label",
                "labels.txt"]) == exitcodes.USAGE
    assert "--participant-label-file labels.txt" in capsys.readouterr().err


@pytest.mark.parametrize("content", [None, "", "\n \n"])
def test_unreadable_or_empty_label_file_is_64(tmp_path, capsys, content):
    # An empty file must not select every subject (an empty --participant-label list does).
    bids = make_raw(tmp_path / "ds", ["01"])
    labels = tmp_path / "labels.txt"
    if content is not None:
        labels.write_text(content)
    out = tmp_path / "o"
    assert run([str(bids), str(out), "participant", "--participant-label-file",
                str(labels)]) == exitcodes.USAGE
    assert str(labels) in capsys.readouterr().err
    assert not out.exists()


def test_label_file_and_labels_together_are_64(tmp_path):
    # A SLURM array task appends its --participant-label: a file beside it would widen it.
    labels = tmp_path / "labels.txt"
    labels.write_text("01\n")
    assert run([str(tmp_path), str(tmp_path / "o"), "participant", "--participant-label-file",
                str(labels), "--participant-label", "02"]) == exitcodes.USAGE


def test_plugin_config_precedence(tmp_path):
    cfg = tmp_path / "p.yml"
    cfg.write_text("plugin: MultiProc\nplugin_args: {n_procs: 3}\n")
    s = parse_settings([str(tmp_path), str(tmp_path / "o"), "participant", "--plugin-config",
                        str(cfg), "--nprocs", "5", "--mem-gb", "4"])
    assert s.plugin_args == {"n_procs": 3, "memory_gb": 4.0, "mp_context": "forkserver"}


def test_unknown_plugin_is_64_naming_the_file_and_the_plugins(tmp_path, capsys):
    bids = make_raw(tmp_path / "ds", ["01"])
    cfg = tmp_path / "bogus.yml"
    cfg.write_text("plugin: Bogus\n")
    out = tmp_path / "out"
    code = run([str(bids), str(out), "participant", "--plugin-config", str(cfg)])
    err = capsys.readouterr().err
    assert code == exitcodes.USAGE
    assert str(cfg) in err and "Bogus" in err
    assert "MultiProc" in err and "Linear" in err and "SLURM" in err
    assert not out.exists()


def test_known_plugins_are_nipypes():
    # The CLI checks plugin names without importing nipype (too early: see prepare_runtime).
    from nipype.pipeline import plugins

    from bids_qc.scheduling import NIPYPE_PLUGINS

    names = {n.removesuffix("Plugin") for n in dir(plugins) if n.endswith("Plugin")}
    assert set(NIPYPE_PLUGINS) == names


def test_plugin_suffix_is_optional(tmp_path):
    cfg = tmp_path / "p.yml"
    cfg.write_text("plugin: MultiProcPlugin\n")
    s = parse_settings([str(tmp_path), str(tmp_path / "o"), "participant", "--plugin-config",
                        str(cfg), "--nprocs", "2"])
    assert s.plugin == "MultiProc" and s.plugin_args["n_procs"] == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        run(["--version"])
    assert exc.value.code == 0
    assert re.match(r"bids_qc \d+\.\d+", capsys.readouterr().out)


def test_rerun_skips_up_to_date_and_force_recomputes(tmp_path, linear_config, capsys):
    bids = _fs_dataset(tmp_path / "ds", ("01",))
    out = tmp_path / "out"
    args = [str(bids), str(out), "participant", "--plugin-config", linear_config]
    assert run(args) == 0
    result = out / "sub-01" / "anat" / "sub-01_T1w.json"
    first = result.stat().st_mtime_ns
    capsys.readouterr()
    assert run(args) == 0
    assert result.stat().st_mtime_ns == first
    assert "1 up to date" in capsys.readouterr().err
    # A changed input is recomputed without --force.
    add_freesurfer(bids, "01", arrays={"norm": tiny_t1w(seed=5)})
    assert run(args) == 0
    assert result.stat().st_mtime_ns > first
    second = result.stat().st_mtime_ns
    assert run([*args, "--force"]) == 0
    assert result.stat().st_mtime_ns > second


def test_a_deleted_result_comes_back_with_a_kept_work_directory(tmp_path, linear_config):
    """With ``-w`` kept (as the SLURM script keeps it), a deleted participant JSON and report
    are written again by a plain rerun and by ``--force``: nipype's cache of the other nodes
    is reused, the node that writes the outputs always runs."""
    bids = _fs_dataset(tmp_path / "ds", ("01",))
    out = tmp_path / "out"
    args = [str(bids), str(out), "participant", "--plugin-config", linear_config,
            "-w", str(tmp_path / "work")]  # fmt: skip
    assert run(args) == 0
    result = out / "sub-01" / "anat" / "sub-01_T1w.json"
    report = out / "sub-01_T1w.html"
    first = json.loads(result.read_text())
    # the scheduler's per-stage wall times, written into the provenance after the run
    assert first["provenance"]["stage_seconds"]["classic"] > 0
    for extra in ([], ["--force"]):
        result.unlink()
        report.unlink()
        assert run([*args, *extra]) == 0, extra
        again = json.loads(result.read_text())
        assert report.is_file(), extra
        assert again["metrics"] == first["metrics"], extra
        assert "classic" in again["provenance"]["stage_seconds"], extra


def test_readme_exit_code_table_matches_the_code():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("<!-- exit-codes")[1].split("<!-- /exit-codes -->")[0]
    for code, (name, when) in exitcodes.TABLE.items():
        assert f"| {code} | {name} | {when} |" in block, f"README lacks exit code {code}"


def test_worker_processes_follow_quiet_and_verbose(tmp_path):
    # MultiProc workers are fresh interpreters: nipype's per-node lines must follow -q/-v
    # there too, not only in the main process. A subprocess per run, as a user's: workers
    # fork from a forkserver that keeps the stderr of the test that started it.
    bids = _fs_dataset(tmp_path / "ds", subjects=("01",))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "bids_qc.cli", str(bids), str(out), "participant",
            "--nprocs", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    quiet = subprocess.run([*args, "-q", "-w", str(tmp_path / "w1")], capture_output=True,
                           text=True, env=env, check=True)  # fmt: skip
    assert "[Node]" not in quiet.stdout + quiet.stderr
    assert "1 processed" in quiet.stderr
    loud = subprocess.run([*args, "-v", "--force", "-w", str(tmp_path / "w2")],
                          capture_output=True, text=True, env=env, check=True)  # fmt: skip
    assert "[Node] Finished" in loud.stdout + loud.stderr


def test_help_states_the_real_defaults_and_the_exit_codes():
    import dataclasses

    from bids_qc import cli, exitcodes
    from bids_qc.models.plugins import PLUGINS
    from bids_qc.models.registry import installed_models

    plugins = {p.name: p for p in PLUGINS}
    assert {"segqc", "regqc", "vinn"} <= {m.name for m in installed_models()}

    def gated(name: str, experimental: bool):
        spec = dataclasses.replace(plugins[name].spec, experimental=experimental)
        return dataclasses.replace(plugins[name], spec=spec)

    # a registry where RegQC passed its gate and VINN did not: the help follows it
    toy = (gated("regqc", False), gated("segqc", True), gated("vinn", True))
    text = " ".join(cli.build_parser(toy).format_help().split())
    assert "default: regqc (the classical metrics always run)" in text
    assert "experimental, run only when named: segqc" in text
    assert "VINN is experimental in this installation, so auto segments only with --models vinn" \
        in text
    for code, (name, _) in exitcodes.TABLE.items():
        assert f"{code} {name}:" in text
    text = " ".join(cli.build_parser((gated("vinn", False),)).format_help().split())
    assert "default: none" in text
    assert "default auto: images without a FreeSurfer-coded segmentation" in text


@pytest.mark.parametrize("corrupt", [b"", b"not an image at all", "truncated"])
def test_corrupt_raw_t1w_is_an_error_naming_the_file(tmp_path, linear_config, capsys, corrupt):
    # raw only, default models: nothing needs the voxels, yet the file must be opened
    bids = make_raw(tmp_path / "ds", ["01", "02"])
    bad = bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2] if corrupt == "truncated" else corrupt)
    out = tmp_path / "out"
    code = run([str(bids), str(out), "participant", "--plugin-config", linear_config])
    err = capsys.readouterr().err
    assert code == exitcodes.IMAGE_FAILED
    assert "FAILED sub-02_T1w" in err and "sub-02_T1w.nii.gz" in err
    assert "FAILED sub-01_T1w" not in err
    result = json.loads((out / "sub-02" / "anat" / "sub-02_T1w.json").read_text())
    assert result["errors"][0]["stage"] == "t1w"
    assert result["errors"][0]["file"].endswith("sub-02_T1w.nii.gz")
    # when no selected image can be read at all: 65
    only = make_raw(tmp_path / "ds2", ["03"])
    (only / "sub-03" / "anat" / "sub-03_T1w.nii.gz").write_bytes(b"")
    code = run([str(only), str(tmp_path / "out2"), "participant", "--plugin-config",
                linear_config])
    assert code == exitcodes.DATA_ERROR


def test_raw_only_run_says_what_it_could_not_check(tmp_path, linear_config, capsys):
    bids = make_raw(tmp_path / "ds", ["01"])
    out = tmp_path / "out"
    assert run([str(bids), str(out), "participant", "--plugin-config", linear_config]) == 0
    err = capsys.readouterr().err
    assert "not checked on 1 of 1 image(s): registration (no template-space T1w" in err
    assert "not checked on 1 of 1 image(s): segmentation (no segmentation" in err
    html = (out / "sub-01_T1w.html").read_text()
    assert "Every stage ran." not in html
    assert "this image was not checked for registration, segmentation" in html


def test_md5_cache_rereads_a_file_only_when_its_size_or_mtime_changes(tmp_path):
    """The README's rerun rule: an input is hashed again when its size or mtime changes."""
    import os

    from bids_qc.io import md5sum
    from bids_qc.outputs import Md5Cache

    f = tmp_path / "t1w.nii.gz"
    f.write_bytes(b"a" * 1000)
    cache = Md5Cache(tmp_path / "logs" / "md5_cache.json")
    first = cache.md5(f)
    assert first == md5sum(f) and cache.hashed == 1
    cache.save()
    again = Md5Cache(tmp_path / "logs" / "md5_cache.json")   # the next run
    assert again.md5(f) == first and again.hashed == 0
    st = os.stat(f)
    f.write_bytes(b"b" * 1000)                                # same size and mtime: missed
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert again.md5(f) == first and again.hashed == 0
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: read again
    assert again.md5(f) == md5sum(f) != first and again.hashed == 1
    f.write_bytes(b"c" * 999)                                 # new size: read again
    assert again.md5(f) == md5sum(f) and again.hashed == 2
