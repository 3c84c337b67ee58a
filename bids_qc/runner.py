"""Participant and group level runs: selection, resume, the nipype run, and the summary."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from . import exitcodes
from .errors import DatasetError, Terminated
from .inputs import QCInput, qc_input_to_dict
from .io import atomic_write_json
from .models.gate import why_experimental
from .models.registry import KNOWN_MODELS, REGISTRY, ModelSpec, installed_models
from .outputs import (
    MD5_CACHE,
    Md5Cache,
    fingerprints,
    init_output_dir,
    is_up_to_date,
    result_path,
)
from .progress import Phases, Progress, logs_beside, stamp_stage_seconds
from .results import failed_result
from .scheduling import make_plugin, set_nipype_log_level, stop_workers
from .settings import Settings

LOGGER = logging.getLogger("bids_qc")

#: Settings that change what a result holds (the rest, such as --nprocs, do not).
_RESULT_OPTIONS = ("seg_source", "device", "thresholds", "segment")


@dataclass
class Selection:
    """Which models run, and which were skipped with why."""

    models: tuple[ModelSpec, ...]
    skipped: list[dict[str, str]] = field(default_factory=list)


def select_models(requested: tuple[str, ...] | None) -> Selection:
    """The installed models among those requested; the rest are skipped with a reason.

    Without ``--models``, experimental models (see :class:`ModelSpec`) are skipped too.
    """
    installed = {m.name: m for m in installed_models()}
    registered = {m.name for m in REGISTRY}
    names = requested or KNOWN_MODELS
    chosen, skipped = [], []
    for name in names:
        spec = installed.get(name)
        if spec is not None and spec.experimental and not requested:
            why = "; ".join(why_experimental(name, spec.sha256))
            skipped.append({"model": name, "reason": "experimental: below the real-data gate "
                            f"({why}); run it with --models {name}"})
        elif spec is not None:
            if spec.experimental:
                LOGGER.warning("model %s is experimental (below the real-data gate: %s): read "
                               "the 'Real data' section of its model card before trusting its "
                               "flags", name, "; ".join(why_experimental(name, spec.sha256)))
            chosen.append(spec)
        elif name in registered:
            skipped.append({"model": name, "reason": "its weights are missing from this "
                            "installation: reinstall bids_qc"})
        else:
            skipped.append({"model": name, "reason": "not available in this version of bids_qc"})
    return Selection(tuple(chosen), skipped)


def _check_writable(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write_test_"):
            pass
    except OSError as exc:
        raise DatasetError(
            f"cannot write to OUTPUT_DIR {output_dir} ({exc.strerror}); choose a writable folder",
            exitcodes.CANT_CREATE,
        ) from None


def _sigterm_as_interrupt() -> Any:
    """Make SIGTERM (schedulers, ``docker stop``) stop the run as Ctrl-C does.

    Returns the previous handler (to restore), or None where none can be set (a thread).
    """
    main_pid = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:
            # A forked MultiProc worker inherits this handler; raising there could run
            # this process's cleanup (or its whole exit path) in the child. Die instead.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated(signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        return None


def _hold_signals() -> dict[int, Any]:
    """Ignore SIGINT and SIGTERM (a second Ctrl-C must not cut the cleanup short).

    Returns the handlers to put back.
    """
    return {signum: signal.signal(signum, signal.SIG_IGN)
            for signum in (signal.SIGINT, signal.SIGTERM)}


def _remove_temp_files(output_dir: Path, rows: list[QCInput]) -> None:
    """Delete the atomic-write temp files (``.<bids_name>*.tmp``) of these images.

    Only these images' own files: a concurrent job on other images keeps its temp files.
    """
    for row in rows:
        pattern = f".{glob_escape(row.bids_name)}*.tmp"
        for folder in {result_path(output_dir, row).parent, output_dir}:
            for tmp in folder.glob(pattern):
                tmp.unlink(missing_ok=True)


def run_participant(settings: Settings) -> int:
    """Participant level; returns the exit code."""
    from .bids import check_dataset, collect_inputs
    from .device import resolve_device

    phases = Phases()
    check_dataset(settings.bids_dir, settings.skip_bids_validation)
    _check_writable(settings.output_dir)
    try:
        device = resolve_device(settings.device)
    except ValueError as exc:
        raise DatasetError(str(exc), exitcodes.USAGE) from None
    phases.mark("validate")
    rows = collect_inputs(settings)
    phases.mark("index")
    init_output_dir(settings.output_dir, settings.bids_dir)
    selection = select_models(settings.models)
    for s in selection.skipped:
        LOGGER.info("model %s skipped: %s", s["model"], s["reason"])
    from .workflows.base import choose_segmenter

    segmenter = choose_segmenter(settings.segment, settings.models)

    options = {k: settings.to_json()[k] for k in _RESULT_OPTIONS}
    options["device"] = device
    options["models_skipped"] = [s["model"] for s in selection.skipped]
    models = selection.models + tuple(m for m in (segmenter,)
                                      if m is not None and m not in selection.models)
    phases.mark("models")
    cache = Md5Cache(settings.output_dir / "logs" / MD5_CACHE)
    prints = fingerprints(rows, models, options, cache, threads=min(8, 2 * settings.nprocs))
    cache.save()
    todo = [r for r in rows if settings.force
            or not is_up_to_date(result_path(settings.output_dir, r), prints[r.bids_name])]
    phases.mark("fingerprint")
    if len(todo) < len(rows):
        LOGGER.info("%d of %d image(s) already have up-to-date results (use --force to "
                    "recompute them)", len(rows) - len(todo), len(rows))
    started = time.time()
    seconds: dict[str, dict[str, float]] = {}
    if todo:
        seconds = _run_workflow(settings, todo, prints, selection, device, segmenter, phases)
        stamp_stage_seconds(settings.output_dir, todo, seconds, started)
    failures = _collect_failures(settings, todo, prints, device, started)
    phases.mark("collect")
    _write_run_log(settings, rows, todo, failures, selection, device, seconds, phases.seconds)
    return _summary(settings, rows, todo, failures, selection)


def _run_workflow(settings: Settings, rows: list[QCInput], prints: dict, selection: Selection,
                  device: str, segmenter: ModelSpec | None = None,
                  phases: Phases | None = None) -> dict[str, dict[str, float]]:  # fmt: skip
    """Run the workflow; returns each image's per-node wall seconds (empty without a
    scheduler callback, e.g. on SLURM)."""
    from .workflows.base import init_bids_qc_wf, workflow_name

    tmp_work = settings.work_dir is None
    try:
        work_dir = settings.work_dir or Path(tempfile.mkdtemp(prefix="bids_qc_work_"))
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create the work directory ({exc}); pass a writable -w DIR",
                           exitcodes.CANT_CREATE) from None
    nipype_level = _quiet_nipype(settings.verbosity)
    wf = init_bids_qc_wf(
        rows, output_dir=settings.output_dir, work_dir=work_dir, fingerprints=prints,
        models=selection.models, device=device,
        crashdump_dir=settings.output_dir / "logs",
        skipped_models=selection.skipped, thresholds=settings.thresholds,
        verbose_reports=settings.verbose_reports,
        max_threads=int(settings.plugin_args.get("n_procs", settings.nprocs)),
        segmenter=segmenter, segment=settings.segment,
    )
    if phases is not None:
        phases.mark("build")
    # nipype's scheduler sleeps 2 s between polls: most of the run when nodes take
    # about a second (the classical stage); 0.5 s costs nothing while nodes run.
    wf.config["execution"]["poll_sleep_duration"] = 0.5
    plugin_args = dict(settings.plugin_args)
    progress = None
    if settings.plugin in ("MultiProc", "Linear"):
        bar = settings.progress and sys.stderr.isatty() and settings.verbosity >= 0
        progress = Progress({workflow_name(r.bids_name): r.bids_name for r in rows},
                             settings.output_dir, bar=bar, verbosity=settings.verbosity)
        plugin_args["status_callback"] = progress
    previous = _sigterm_as_interrupt()
    LOGGER.info("processing %d image(s) with %s (%s)", len(rows), settings.plugin,
                ", ".join(f"{k}={v}" for k, v in plugin_args.items() if k != "status_callback"))
    plugin = None
    try:
        plugin = make_plugin(settings.plugin, plugin_args, log_level=nipype_level)
        with logs_beside(progress):
            wf.run(plugin=plugin, plugin_args=plugin_args)
    except RuntimeError as exc:
        # nipype raises once some node crashed; each image's failure is collected below.
        LOGGER.debug("nipype reported: %s", exc)
    except BaseException:  # interrupted (SIGINT/SIGTERM): stop workers, leave no temp files
        held = _hold_signals() if previous is not None else {}
        try:
            stop_workers(plugin)
        finally:
            for signum, handler in held.items():
                signal.signal(signum, handler)
        raise
    finally:
        if phases is not None:
            phases.mark("run")  # a crashed node's run too
        if progress is not None:
            progress.close()
        # Workers killed mid-write (interrupted, or a dead worker's pool) leave temp files.
        _remove_temp_files(settings.output_dir, rows)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if tmp_work:
            shutil.rmtree(work_dir, ignore_errors=True)
    return progress.seconds if progress is not None else {}


def _quiet_nipype(verbosity: int) -> str:
    """Set nipype's log level in this process from ``-v``/``-q``; returns the level."""
    level = "INFO" if verbosity > 0 else "WARNING"
    set_nipype_log_level(level)
    return level


def _crash_message(settings: Settings, row: QCInput) -> tuple[str, str]:
    """The last error line of this image's newest nipype crash file, and where the file is."""
    from .workflows.base import workflow_name

    marker = f".{workflow_name(row.bids_name)}."
    for crash in sorted((settings.output_dir / "logs").glob("crash-*"), reverse=True):
        text = crash.read_text(errors="replace").splitlines()
        if not text or marker not in text[0]:
            continue
        errors = [line.strip() for line in text
                  if re.match(r"^\s*[\w.]*(Error|Exception|Interrupt)\b.*", line)]
        last = errors[-1] if errors else "the node crashed"
        node = text[0].removeprefix("Node: ").rsplit(".", 1)[-1]
        return f"node {node} crashed: {last}", f"See {crash}; rerun to retry this image."
    return ("the workflow stopped before writing results (killed, out of memory?)",
            "See logs/ and the scheduler's log; rerun to retry this image.")


def _collect_failures(settings: Settings, rows: list[QCInput], prints: dict, device: str,
                      started: float) -> dict[str, str]:
    """bids_name -> qc_error for every processed image that failed (JSON written for all)."""
    failures = {}
    for row in rows:
        path = result_path(settings.output_dir, row)
        fresh = path.is_file() and path.stat().st_mtime >= started - 1
        if not fresh:
            problem, hint = _crash_message(settings, row)
            error = {"stage": "workflow", "file": None, "problem": problem, "hint": hint,
                     "message": f"{problem}. {hint}"}
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, failed_result(
                qc_input_to_dict(row), prints[row.bids_name], device, error))
        data = json.loads(path.read_text())
        if data.get("qc_error"):
            failures[row.bids_name] = data["qc_error"]
    return failures


def _write_run_log(settings: Settings, rows: list[QCInput], todo: list[QCInput],
                   failures: dict[str, str], selection: Selection, device: str,
                   seconds: dict[str, dict[str, float]] | None = None,
                   phase_seconds: dict[str, float] | None = None) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = {
        "settings": settings.to_json(),
        "device": device,
        "images": [r.bids_name for r in rows],
        "processed": [r.bids_name for r in todo],
        "failed": failures,
        "models": [m.name for m in selection.models],
        "models_skipped": selection.skipped,
        "phase_seconds": phase_seconds or {},
        "stage_seconds": seconds or {},
    }
    # Host and PID in the name: concurrent jobs (a SLURM array) each keep their own log.
    name = f"run-{stamp}-{socket.gethostname()}-{os.getpid()}.json"
    atomic_write_json(settings.output_dir / "logs" / name, record)


def _all_unreadable(settings: Settings, todo: list[QCInput]) -> bool:
    """Whether every processed image failed on its input files (nothing could be read).

    An image with any metric computed had a readable input (e.g. an all-zero norm.mgz
    beside a good aseg.mgz), so it is an image failure (1), not bad data (65).
    """
    for row in todo:
        data = json.loads(result_path(settings.output_dir, row).read_text())
        errors = data.get("errors", [])
        if not errors or not all(e.get("file") for e in errors):
            return False
        if any(v is not None for v in data.get("metrics", {}).values()):
            return False
    return True


def _not_checked_lines(settings: Settings, todo: list[QCInput]) -> list[str]:
    """One line per stage that could not run on some processed image, with the first reason
    (it says which option or derivative would add the check). Models skipped for the whole
    run are listed apart, by the caller."""
    counts: dict[str, list] = {}
    for row in todo:
        path = result_path(settings.output_dir, row)
        if not path.is_file():
            continue
        for s in json.loads(path.read_text()).get("skipped", []):
            if s.get("stage"):
                counts.setdefault(s["stage"], [0, s.get("reason", "")])[0] += 1
    return [f"  not checked on {n} of {len(todo)} image(s): {stage} ({reason})"
            for stage, (n, reason) in counts.items()]


def _summary(settings: Settings, rows: list[QCInput], todo: list[QCInput],
             failures: dict[str, str], selection: Selection) -> int:
    lines = [f"bids_qc: {len(rows)} image(s) selected, {len(todo)} processed, "
             f"{len(rows) - len(todo)} up to date, {len(failures)} failed."]
    for name, reason in sorted(failures.items()):
        lines.append(f"  FAILED {name}: {reason}")
    lines += _failure_hints(settings, failures)
    lines += _not_checked_lines(settings, todo)
    for s in selection.skipped:
        lines.append(f"  model {s['model']} skipped: {s['reason']}")
    lines.append(f"  outputs: {settings.output_dir} (run group level next: bids_qc "
                 f"{settings.bids_dir} {settings.output_dir} group)")
    print("\n".join(lines), file=sys.stderr)
    # Up-to-date images were read in an earlier run: 65 only when no selected image was.
    if todo and len(failures) == len(rows) and _all_unreadable(settings, todo):
        print(
            "bids_qc: error: no selected image could be read; see the FAILED lines above",
            file=sys.stderr,
        )
        return exitcodes.DATA_ERROR
    if failures:
        print(f"bids_qc: error: {len(failures)} image(s) failed (listed above); fix their "
              "inputs and rerun: finished images are kept", file=sys.stderr)
        return exitcodes.IMAGE_FAILED
    return exitcodes.OK


def _failure_hints(settings: Settings, failures: dict[str, str]) -> list[str]:
    """One line per common cause among the failures, saying what to do (once, not per image)."""
    reasons = " ".join(failures.values())
    hints = []
    if "annexed file whose content" in reasons or "git-annex pointer" in reasons:
        hints.append("  hint: some inputs are git-annex/DataLad files whose content is not "
                     "fetched: run `datalad get` on the files named above (full paths in each "
                     f"JSON's errors[].file), or `datalad get -r {settings.bids_dir}` for "
                     "everything, then rerun; only the failed images are redone")
    return hints


def run_group(settings: Settings) -> int:
    """Group level: tables and report from the participant JSONs; returns the exit code."""
    from .group import write_group_outputs

    if not settings.output_dir.is_dir():
        raise DatasetError(f"OUTPUT_DIR {settings.output_dir} does not exist; run participant "
                           "level first", exitcodes.NO_INPUT)
    _check_writable(settings.output_dir)
    try:
        tsv, html, frame, problems = write_group_outputs(settings.output_dir)
    except FileNotFoundError as exc:
        raise DatasetError(str(exc), exitcodes.NO_INPUT) from None
    for problem in problems:
        LOGGER.warning("unreadable participant result skipped: %s", problem)
    failed = int((frame["qc_error"].fillna("") != "").sum())
    print(f"bids_qc: group of {len(frame)} image(s) ({failed} with errors): {tsv} and {html}",
          file=sys.stderr)
    return exitcodes.OK
