"""Interrupting a MultiProc or Linear run (SIGTERM from a scheduler, SIGINT from Ctrl-C)
loses nothing.

A run is started in a subprocess and signalled once its first participant JSON appears;
every JSON left must be complete, no temp file may remain, the exit code is non-zero,
and a rerun finishes the rest without recomputing the finished images. A worker killed
by the system (out of memory) fails its own image only, also when other workers' jobs were
lost with its pool.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bids_qc import exitcodes
from bids_qc.cli import run
from tests.fakebids import add_freesurfer, make_raw

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = [f"{i:02d}" for i in range(1, 7)]


def _dataset(root: Path) -> Path:
    """Six FreeSurfer subjects (each image takes a few scheduler polls, about 2 s)."""
    make_raw(root, SUBJECTS)
    for subject in SUBJECTS:
        add_freesurfer(root, subject, volumes=("norm",))
    return root


def _results(out: Path) -> dict[str, int]:
    """Participant JSON -> mtime (ns); each must parse completely."""
    found = {}
    for path in sorted(out.glob("sub-*/anat/*.json")):
        data = json.loads(path.read_text())  # a partial file would raise here
        assert data["bids_name"] == path.stem and "provenance" in data
        found[path.name] = path.stat().st_mtime_ns
    return found


_DOTFILES = {".bidsignore", ".bids-validator-config.json"}  # written by init_output_dir


def _leftovers(out: Path) -> list[Path]:
    """Temp files (``*.tmp``, hidden files other than the dataset's own) under ``out``."""
    return [p for p in out.rglob("*")
            if p.name.endswith(".tmp") or (p.name.startswith(".") and p.name not in _DOTFILES)]


def _interactive_signals() -> None:
    """Give the child the signal dispositions of a foreground run.

    A test suite started in the background (``cmd &``, nohup) inherits SIGINT ignored, and
    Python then installs no Ctrl-C handler in the child: that is Unix's rule for background
    jobs, not a bids_qc behaviour, so the child starts from the defaults here.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize(("signum", "plugin"), [
    (signal.SIGTERM, "MultiProc"), (signal.SIGINT, "MultiProc"),
    (signal.SIGTERM, "Linear"), (signal.SIGINT, "Linear"),
], ids=["TERM", "INT", "Linear-TERM", "Linear-INT"])  # fmt: skip
def test_interrupted_run_leaves_complete_results_and_resumes(tmp_path, signum, plugin):
    bids = _dataset(tmp_path / "ds")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    config = tmp_path / "plugin.yml"
    config.write_text(f"plugin: {plugin}\nplugin_args: {{}}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bids_qc.cli", str(bids), str(out), "participant",
         "--nprocs", "2", "--plugin-config", str(config)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_interactive_signals)
    deadline = time.monotonic() + 120
    while not any(out.glob("sub-*/anat/*.json")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no result appeared before the run ended:\n{proc.communicate()[1]}")
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 128 + signum, err  # the shell's convention: 143 / 130
    assert "interrupted" in err, err
    done = _results(out)
    assert 0 < len(done) < len(SUBJECTS), "the signal must land while images remain"
    assert _leftovers(out) == []

    assert run([str(bids), str(out), "participant", "--nprocs", "2",
                "--plugin-config", str(config)]) == exitcodes.OK
    after = _results(out)
    assert len(after) == len(SUBJECTS)
    assert {name: after[name] for name in done} == done, "finished images were recomputed"
    assert _leftovers(out) == []


def _run_forked(tmp_path: Path, out: Path, subjects: tuple[str, ...], n_procs: int
                ) -> dict[str, dict]:  # fmt: skip
    """Run FreeSurfer subjects through MultiProc with forked workers (which inherit the
    test's patches; the default is forkserver), classical nodes only (VINN is a segmenter,
    not a QC stage, and --segment never keeps it off); one of them fails. Returns the
    participant JSONs."""
    bids = tmp_path / "ds"
    make_raw(bids, list(subjects))
    for subject in subjects:
        add_freesurfer(bids, subject, volumes=("norm",))
    config = tmp_path / "fork.yml"
    config.write_text(f"plugin: MultiProc\nplugin_args: {{n_procs: {n_procs}, "
                      "mp_context: fork}\n")  # fmt: skip
    code = run([str(bids), str(out), "participant", "--plugin-config", str(config),
                "--models", "vinn", "--segment", "never"])
    assert code == exitcodes.IMAGE_FAILED
    return {n: json.loads((out / f"sub-{n}" / "anat" / f"sub-{n}_T1w.json").read_text())
            for n in subjects}  # fmt: skip


def test_a_killed_worker_fails_only_its_image(tmp_path, monkeypatch):
    # The out-of-memory killer ends a MultiProc worker (SIGKILL): nipype's pool breaks.
    # That image must fail with a reason, the others must still be processed.
    from bids_qc.interfaces import classic

    original = classic.ClassicMetrics._run_interface

    def dies_on_02(self, runtime):
        if self.inputs.qc_input["bids_name"] == "sub-02_T1w":
            os.kill(os.getpid(), signal.SIGKILL)  # runs in the forked worker
        return original(self, runtime)

    monkeypatch.setattr(classic.ClassicMetrics, "_run_interface", dies_on_02)
    out = tmp_path / "out"
    results = _run_forked(tmp_path, out, ("01", "02", "03"), n_procs=1)
    # Either the node's own crash record or the runner's "no result" record names the kill.
    assert "killed" in results["02"]["qc_error"]
    assert "out of memory" in results["02"]["errors"][0]["problem"]
    assert results["01"]["qc_error"] == "" and results["03"]["qc_error"] == ""
    assert _leftovers(out) == []


def test_jobs_lost_with_a_killed_workers_pool_run_again(tmp_path, monkeypatch):
    # Two workers: when sub-02's worker dies, the job running beside it dies with the pool.
    # That job must run again and its image succeed; only sub-02 fails.
    from bids_qc.interfaces import classic

    original = classic.ClassicMetrics._run_interface
    marks = tmp_path / "marks"
    marks.mkdir()

    def slow_and_02_dies(self, runtime):
        name = self.inputs.qc_input["bids_name"]
        (marks / f"{name}.{os.getpid()}").touch()  # which images started, in which worker
        if name == "sub-02_T1w":
            # Wait until a neighbour is running in the other worker, then die.
            deadline = time.monotonic() + 30
            while (len({p.suffix for p in marks.iterdir()}) < 2
                   and time.monotonic() < deadline):  # fmt: skip
                time.sleep(0.05)
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(1.5)
        return original(self, runtime)

    monkeypatch.setattr(classic.ClassicMetrics, "_run_interface", slow_and_02_dies)
    subjects = ("01", "02", "03", "04")
    out = tmp_path / "out"
    results = _run_forked(tmp_path, out, subjects, n_procs=2)
    assert "killed" in results["02"]["qc_error"]
    assert {n for n in subjects if results[n]["qc_error"]} == {"02"}
    # A neighbour really was in flight: some other image's node started twice.
    starts = {}
    for mark in marks.iterdir():
        starts.setdefault(mark.stem, set()).add(mark.suffix)
    again = [n for n, pids in starts.items() if len(pids) > 1 and n != "sub-02_T1w"]
    assert again, starts
    assert len(starts["sub-02_T1w"]) == 2  # run again once, alone, then failed
    assert _leftovers(out) == []
