"""What a person watching a run sees: progress, per-image lines, per-stage times."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .inputs import QCInput
from .io import atomic_write_json
from .outputs import result_path

LOGGER = logging.getLogger("bids_qc")


class Phases:
    """Wall seconds of a run's phases, in order (the run log's ``phase_seconds``, which the
    profile benchmark reads)."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def mark(self, name: str) -> None:
        """End the phase ``name`` now (it began where the previous one ended)."""
        now = time.monotonic()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 3)
        self._last = now


class Progress:
    """Images done out of total, the image running and failures so far.

    On a terminal (and without ``--no-progress``) a tqdm bar with counts, rate and ETA from
    the workflow's start; elsewhere (SLURM logs, pipes) plain log lines. An image counts as
    started at its first node (VINN or the registration on raw data, not only the classical
    stage); at ``-v``, and whenever there is no bar, a line per finished image gives its
    time and the checks it failed.
    """

    def __init__(self, names: dict[str, str], output_dir: Path, bar: bool = False,
                 verbosity: int = 0) -> None:  # fmt: skip
        self.names = names  # workflow name -> bids_name
        self.output_dir = output_dir
        self.total = len(names)
        self.done = 0
        self.failed = 0
        self.verbosity = verbosity
        self.started: dict[str, float] = {}
        #: Wall seconds of each node of each image (start to end, as the scheduler saw it).
        self.seconds: dict[str, dict[str, float]] = {}
        self._node_start: dict[tuple[str, str], float] = {}
        self.bar: Any = None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="image", desc="bids_qc", file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.1)  # fmt: skip

    def __call__(self, node: Any, status: str) -> None:
        wf = node.fullname.split(".")[-2] if "." in node.fullname else ""
        bids_name = self.names.get(wf)
        if bids_name is None:
            return
        key = (bids_name, node.name)
        if status == "start":
            self._node_start[key] = time.monotonic()
        elif key in self._node_start:
            took = time.monotonic() - self._node_start.pop(key)
            self.seconds.setdefault(bids_name, {})[node.name] = round(took, 3)
        if status == "start" and bids_name not in self.started:
            self.started[bids_name] = time.monotonic()
            if self.bar is not None:
                self.bar.set_postfix_str(f"{bids_name}; failed {self.failed}")
            else:
                LOGGER.info("[%d/%d] started %s", self.done, self.total, bids_name)
        elif status == "exception":
            self.done += 1
            self.failed += 1
            self._advance(bids_name)
            LOGGER.warning("[%d/%d] FAILED %s (%s node crashed; failures so far: %d)",
                           self.done, self.total, bids_name, node.name, self.failed)
        elif status == "end" and node.name == "write_results":
            self.done += 1
            self._advance(bids_name)
            if self.bar is None or self.verbosity > 0:
                LOGGER.info("[%d/%d] done %s in %.1f s: %s (failures so far: %d)", self.done,
                            self.total, bids_name, self._took(bids_name), _verdict(node),
                            self.failed)  # fmt: skip

    def _took(self, bids_name: str) -> float:
        return time.monotonic() - self.started.get(bids_name, time.monotonic())

    def _advance(self, bids_name: str) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"{bids_name} done; failed {self.failed}")

    def close(self) -> None:
        """End the bar (a no-op without one)."""
        if self.bar is not None:
            self.bar.close()


def stamp_stage_seconds(output_dir: Path, rows: list[QCInput],
                         seconds: dict[str, dict[str, float]], started: float) -> None:
    """Add each image's per-stage wall seconds to the provenance of the JSON this run wrote
    (``provenance.stage_seconds``; nodes run in other processes, so only the scheduler,
    here, sees every stage's time)."""
    for row in rows:
        times = seconds.get(row.bids_name)
        path = result_path(output_dir, row)
        if not times or not path.is_file() or path.stat().st_mtime < started - 1:
            continue
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        result.setdefault("provenance", {})["stage_seconds"] = times
        atomic_write_json(path, result)


def _verdict(node: Any) -> str:
    """``PASS`` or the checks an image's participant JSON fails (from the node's output)."""
    from .reports.checks import evaluate

    try:
        result = json.loads(Path(node.result.outputs.out_json).read_text())
    except (AttributeError, OSError, TypeError, ValueError):
        return "verdict unknown"
    outcomes = evaluate(result)
    failed = [o.spec.flag for o in outcomes if o.flag]
    if failed:
        return "flagged: " + ", ".join(failed)
    # "PASS" only when some check had a value: a raw image every model skipped passed none.
    if not any(o.flag is not None for o in outcomes):
        return "not checked: every check skipped (see the JSON's skipped)"
    return "PASS"


def logs_beside(progress: Progress | None) -> Any:
    """Log lines printed above the bar while it runs (tqdm's logging redirect)."""
    if progress is None or progress.bar is None:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm(loggers=[LOGGER, logging.getLogger("nipype.workflow")])
