"""The built wheel carries its templates and weights and works outside the source tree."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bids_qc.models.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(ROOT)],
        check=True,
    )
    (found,) = dist.glob("bids_qc-*.whl")
    return found


def test_wheel_contains_templates_weights_and_cards(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in ("participant.html.j2", "group.html.j2", "base.html.j2"):
        assert f"bids_qc/templates/{template}" in names
    for spec in REGISTRY:
        assert f"bids_qc/models/weights/{spec.weights}" in names
        assert f"bids_qc/models/cards/{spec.name}.md" in names
        assert f"bids_qc/models/cards/ledger/{spec.name}.json" in names
    assert "bids_qc/training/templates/ledger_section.md.j2" in names
    assert not any(n.startswith("tests/") for n in names)


def test_wheel_installs_and_runs_version_and_demo(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # Dependencies come from this environment (a path entry, so its editable-install hooks
    # are not loaded); bids_qc itself only from the wheel.
    purelib = next(venv.glob("lib/python*/site-packages"))
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    py = str(venv / "bin" / "python")
    where = subprocess.run([py, "-c", "import bids_qc; print(bids_qc.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path, env=env)
    assert str(venv) in where.stdout, "bids_qc was not imported from the installed wheel"
    version = subprocess.run([str(venv / "bin" / "bids_qc"), "--version"], capture_output=True,
                             text=True, cwd=tmp_path, env=env)
    assert version.returncode == 0 and version.stdout.startswith("bids_qc ")
    demo = subprocess.run([str(venv / "bin" / "bids_qc-demo"), str(tmp_path / "demo")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert demo.returncode == 0, demo.stderr[-3000:]
    out = tmp_path / "demo" / "bids" / "derivatives" / "bids_qc"
    assert (out / "group_T1w.tsv").is_file() and (out / "sub-01_T1w.html").is_file()
