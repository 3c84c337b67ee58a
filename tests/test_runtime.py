"""Caches and temp files find a writable place whatever the container gives (bids_qc.runtime)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bids_qc.runtime import CACHE_VARS, prepare_runtime
from tests.fakebids import add_freesurfer, make_raw


@pytest.fixture
def clean_env(monkeypatch):
    """Every variable prepare_runtime may set, restored after the test."""
    for var in (*CACHE_VARS, "TMPDIR", "HOME", "LOGNAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", None)
    return monkeypatch


def _unwritable(tmp_path: Path) -> Path:
    """A path no one can create: its parent is a regular file (true even for root)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return blocker / "dir"


def test_unwritable_home_and_caches_go_to_a_private_temp_folder(clean_env, tmp_path):
    clean_env.setenv("HOME", str(_unwritable(tmp_path)))
    clean_env.setenv("MPLCONFIGDIR", str(_unwritable(tmp_path) / "mpl"))
    clean_env.setenv("TMPDIR", str(tmp_path / "tmp"))
    assert prepare_runtime() == tmp_path / "tmp"
    for var in (*CACHE_VARS, "HOME"):
        folder = Path(os.environ[var])
        assert (tmp_path / "tmp") in folder.parents, var
    Path(os.environ["MPLCONFIGDIR"]).mkdir(parents=True, exist_ok=True)
    assert os.environ["LOGNAME"]


def test_writable_settings_are_kept(clean_env, tmp_path):
    clean_env.setenv("HOME", str(tmp_path))
    clean_env.setenv("TORCH_HOME", str(tmp_path / "torch"))
    prepare_runtime()
    assert os.environ["TORCH_HOME"] == str(tmp_path / "torch")
    assert os.environ["HOME"] == str(tmp_path)
    assert "MPLCONFIGDIR" not in os.environ  # matplotlib's default under HOME works


def test_unwritable_tmpdir_falls_back(clean_env, tmp_path):
    clean_env.setenv("TMPDIR", str(_unwritable(tmp_path)))
    base = prepare_runtime(work_dir=tmp_path / "work")
    assert base is not None and os.access(base, os.W_OK)
    assert Path(tempfile.mkdtemp()).parent == base


def test_nipype_slurm_job_names_need_logname(clean_env):
    prepare_runtime()
    assert os.environ["LOGNAME"]


def test_run_without_home_or_logname(tmp_path):
    """The command line itself, with HOME unwritable and no LOGNAME (containers, cron)."""
    bids = make_raw(tmp_path / "ds", ["01"])
    add_freesurfer(bids, "01")
    (tmp_path / "linear.yml").write_text("plugin: Linear\nplugin_args: {}\n")
    env = {k: v for k, v in os.environ.items() if k not in (*CACHE_VARS, "LOGNAME", "USER")}
    env["HOME"] = str(_unwritable(tmp_path))
    env["TMPDIR"] = str(tmp_path / "tmp")
    done = subprocess.run([sys.executable, "-m", "bids_qc.cli", str(bids), str(tmp_path / "out"),
                           "participant", "--plugin-config", str(tmp_path / "linear.yml")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Matplotlib created a temporary cache directory" not in done.stderr
    assert not list((tmp_path / "tmp").glob("bids_qc-cache-*")), "cache folder not removed"
