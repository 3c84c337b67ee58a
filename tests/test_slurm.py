"""Cluster execution on a real SLURM cluster, and concurrent jobs sharing one output folder.

A single-node SLURM cluster (Debian ``slurm-wlm`` and ``munge``, installed by the fixture
where missing) is started on loopback (:mod:`tests.slurm_cluster`). The same small dataset
then goes through participant level three ways: nipype's MultiProc plugin (the
reference), nipype's SLURM plugin (``--plugin-config``: every node an sbatch job), and the
shipped ``cluster/slurm_array.sh`` (one participant per array task, a shared pybids
database, then the group job after ``afterok``). Group level runs on each; the results
must equal the reference apart from timestamps.

The cluster tests run under ``CI=true`` (where a missing tool fails them) or locally with
``BIDS_QC_SYSTEM_TESTS=1``; the concurrency test always runs.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bids_qc.outputs import dataset_description
from bids_qc.schema import RUN_VARIABLE_KEYS
from tests.fakebids import add_freesurfer, make_raw
from tests.slurm_cluster import COMMANDS, PACKAGES, SlurmCluster
from tests.system_tools import apt_install, require_system_tests, say, unavailable

ROOT = Path(__file__).resolve().parents[1]
ARRAY_SCRIPT = ROOT / "cluster" / "slurm_array.sh"
SUBJECTS = ("01", "02", "03")

pytestmark = pytest.mark.slow


def _bids_qc(*args: str, env: dict[str, str] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bids_qc.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def _ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}"


def _comparable(path: Path) -> dict:
    """A participant JSON without what legitimately differs between runs (its timestamp and
    stage seconds)."""
    data = json.loads(path.read_text())
    for key in RUN_VARIABLE_KEYS:
        data["provenance"].pop(key, None)  # the SLURM plugin reports no stage seconds
    return data


def _results(out: Path) -> dict[str, dict]:
    return {p.name: _comparable(p) for p in sorted(out.glob("sub-*/anat/*.json"))}


def _group_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "group_T1w.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three subjects with FreeSurfer-style derivatives (tiny images)."""
    root = make_raw(tmp_path_factory.mktemp("slurm_ds") / "ds", SUBJECTS)
    for s in SUBJECTS:
        add_freesurfer(root, s)
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pytestconfig):
    require_system_tests("the SLURM cluster test")
    if os.geteuid() != 0:
        unavailable("the SLURM cluster test needs root (slurmd runs jobs as their submitter)")
    took = apt_install(PACKAGES, COMMANDS)
    if took:
        say(pytestconfig, f"slurm-wlm and munge install took {took:.1f} s")
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=2)
    started = time.perf_counter()
    try:
        slurm.start()
    except RuntimeError as exc:
        slurm.stop()
        unavailable(f"the SLURM cluster did not start: {exc}")
    say(pytestconfig, f"SLURM cluster up in {time.perf_counter() - started:.1f} s "
        f"({slurm.folder})")
    yield slurm
    slurm.stop()


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> Path:
    """Participant level with MultiProc, then group level."""
    out = tmp_path_factory.mktemp("multiproc") / "out"
    _ok(_bids_qc(str(dataset), str(out), "participant", "--nprocs", "2"))
    _ok(_bids_qc(str(dataset), str(out), "group"))
    return out


def _job_count(cluster: SlurmCluster) -> int:
    done = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True,
                          env=cluster.env())
    return len(re.findall(r"^JobId=", done.stdout, flags=re.M))


def test_slurm_plugin_matches_multiproc(cluster, dataset, reference, tmp_path, pytestconfig):
    config = tmp_path / "slurm.yml"
    config.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --cpus-per-task=1\n"
                      "  max_jobs: 4\n")
    out, work = tmp_path / "out", tmp_path / "work"
    jobs_before = _job_count(cluster)
    started = time.perf_counter()
    _ok(_bids_qc(str(dataset), str(out), "participant", "--plugin-config", str(config),
                 "-w", str(work), env=cluster.env()))
    took = time.perf_counter() - started
    # Every node went through sbatch: nipype's batch scripts, and jobs the cluster ran.
    assert list(work.rglob("batchscript_*.sh")), "nipype's SLURM plugin wrote no batch script"
    ran = _job_count(cluster) - jobs_before
    assert ran >= len(SUBJECTS)
    say(pytestconfig, f"SLURM plugin: participant level of {len(SUBJECTS)} images as {ran} "
        f"SLURM jobs in {took:.1f} s")
    _ok(_bids_qc(str(dataset), str(out), "group", env=cluster.env()))
    assert _results(out) == _results(reference)
    assert _group_rows(out) == _group_rows(reference)


def test_array_script_matches_multiproc(cluster, dataset, reference, tmp_path, pytestconfig):
    out, work_root = tmp_path / "out", tmp_path / "cluster"
    env = {**cluster.env(), "BIDS_QC_PYTHON": sys.executable,
           "BIDS_QC": f"{sys.executable} -m bids_qc.cli",
           "SBATCH_ARGS": "--cpus-per-task=1"}
    started = time.perf_counter()
    # Extra options go to every task; a label list there must not override the task's.
    done = subprocess.run(["bash", str(ARRAY_SCRIPT), str(dataset), str(out), str(work_root),
                           "--participant-label", "03", "01", "02"],
                          capture_output=True, text=True, env=env, timeout=300)
    _ok(done)
    array_id = re.search(r"^array job (\d+)$", done.stdout, flags=re.M).group(1)
    group_id = re.search(r"^group job (\d+)$", done.stdout, flags=re.M).group(1)
    states = cluster.wait_job(group_id, timeout=600)
    took = time.perf_counter() - started
    logs = "\n".join(p.read_text() for p in sorted((work_root / "logs").glob("*.out")))
    assert states == "COMPLETED", f"group job {states}:\n{logs[-4000:]}\n{cluster.logs()}"
    assert cluster.job_state(array_id).split() == ["COMPLETED"] * len(SUBJECTS)
    say(pytestconfig, f"array script: {len(SUBJECTS)} array tasks and the group job done in "
        f"{took:.1f} s")

    # One participant per task, each with its own work directory.
    listed = (work_root / "participants.txt").read_text().split()
    assert listed == list(SUBJECTS)
    run_logs = [json.loads(p.read_text()) for p in (out / "logs").glob("run-*.json")]
    assert sorted(log["images"] for log in run_logs) == [[f"sub-{s}_T1w"] for s in SUBJECTS]
    assert sorted(p.name for p in (work_root / "work").iterdir()) == [
        f"sub-{s}" for s in SUBJECTS]
    # The tasks loaded the database step 1 built (the list is written after it): none
    # reindexed or rewrote it.
    db_files = [p for p in (work_root / "bids_db").rglob("*") if p.is_file()]
    assert db_files
    listed_at = (work_root / "participants.txt").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= listed_at for p in db_files)
    assert "reindexing" not in logs
    assert _results(out) == _results(reference)
    assert _group_rows(out) == _group_rows(reference)


def test_concurrent_participant_jobs_share_one_output_dir(dataset, tmp_path):
    """Several participant processes at once into one OUTPUT_DIR: every file complete."""
    out = tmp_path / "out"
    linear = tmp_path / "linear.yml"
    linear.write_text("plugin: Linear\nplugin_args: {}\n")
    procs = [
        subprocess.Popen([sys.executable, "-m", "bids_qc.cli", str(dataset), str(out),
                          "participant", "--participant-label", s, "--plugin-config",
                          str(linear), "-w", str(tmp_path / f"work-{s}")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for s in SUBJECTS
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    assert json.loads((out / "dataset_description.json").read_text()) == json.loads(
        json.dumps(dataset_description(dataset)))
    run_logs = sorted((out / "logs").glob("run-*.json"))
    assert len(run_logs) == len(SUBJECTS), "concurrent jobs overwrote each other's run log"
    assert sorted(json.loads(p.read_text())["processed"][0] for p in run_logs) == [
        f"sub-{s}_T1w" for s in SUBJECTS]
    results = _results(out)
    assert sorted(results) == [f"sub-{s}_T1w.json" for s in SUBJECTS]
    assert all(r["qc_error"] == "" and r["metrics"] for r in results.values())
    assert not list(out.rglob("*.tmp")), "a temp file of an atomic write was left behind"
    assert all((out / f"sub-{s}_T1w.html").stat().st_size > 0 for s in SUBJECTS)
    _ok(_bids_qc(str(dataset), str(out), "group"))
    assert [r["bids_name"] for r in _group_rows(out)] == [f"sub-{s}_T1w" for s in SUBJECTS]


@pytest.mark.parametrize("yaml_text, plugin_class, expected", [
    ("plugin: Linear\n", "ImageFirstLinearPlugin", {}),
    ("plugin: SLURM\nplugin_args:\n  sbatch_args: --mem=4G --cpus-per-task=2\n  max_jobs: 5\n",
     "SLURMPlugin", {"sbatch_args": "--mem=4G --cpus-per-task=2", "max_jobs": 5}),
    ("plugin: MultiProc\nplugin_args: {n_procs: 3}\n", "ImageFirstMultiProcPlugin",
     {"n_procs": 3, "memory_gb": 2.0, "mp_context": "forkserver"}),
])
def test_plugin_config_selects_nipype_plugin_and_args(tmp_path, yaml_text, plugin_class,
                                                       expected):
    from bids_qc.cli import parse_settings
    from bids_qc.scheduling import make_plugin

    config = tmp_path / "plugin.yml"
    config.write_text(yaml_text)
    settings = parse_settings([str(tmp_path), str(tmp_path / "out"), "participant",
                               "--plugin-config", str(config), "--nprocs", "1",
                               "--mem-gb", "2"])
    assert settings.plugin_args == expected  # the file wins; --nprocs/--mem-gb fill gaps
    plugin = make_plugin(settings.plugin, settings.plugin_args)
    assert type(plugin).__name__ == plugin_class
    if plugin_class == "SLURMPlugin":
        assert plugin._sbatch_args == expected["sbatch_args"]


def test_cluster_index_step_lists_participants_and_builds_the_database(dataset, tmp_path,
                                                                      capsys):
    from bids_qc.cluster import main

    db = tmp_path / "db"
    assert main([str(dataset), str(tmp_path / "out"), "participant",
                 "--bids-database-dir", str(db), "--participant-label", "03", "01"]) == 0
    assert capsys.readouterr().out.split() == ["01", "03"]
    assert list(db.glob("*.sqlite"))
    assert main([str(dataset), str(tmp_path / "out"), "participant"]) == 64
    assert "--bids-database-dir" in capsys.readouterr().err
    assert main([str(dataset), str(tmp_path / "out"), "participant", "--bids-database-dir",
                 str(db), "--participant-label", "99"]) == 18
