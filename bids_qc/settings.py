"""The run's settings: a frozen dataclass built by :mod:`bids_qc.cli` and passed explicitly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

AnalysisLevel = Literal["participant", "group"]
SegSourceChoice = Literal["auto", "freesurfer", "fastsurfer", "fmriprep"]
SegmentChoice = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class Settings:
    """Options of one bids_qc run (see ``bids_qc --help`` for each)."""

    bids_dir: Path
    output_dir: Path
    analysis_level: AnalysisLevel
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    bids_filters: dict[str, Any] = field(default_factory=dict)
    derivatives: tuple[Path, ...] | None = None
    seg_source: SegSourceChoice = "auto"
    models: tuple[str, ...] | None = None
    device: str = "auto"
    work_dir: Path | None = None
    nprocs: int = 1
    mem_gb: float | None = None
    plugin: str = "MultiProc"
    plugin_args: dict[str, Any] = field(default_factory=dict)
    skip_bids_validation: bool = False
    bids_database_dir: Path | None = None
    force: bool = False
    thresholds: dict[str, float] = field(default_factory=dict)
    verbose_reports: bool = False
    #: F-recall target ShapeQC's thresholds were re-derived for (None: shipped thresholds).
    shapeqc_recall: float | None = None
    verbosity: int = 0
    segment: SegmentChoice = "auto"
    #: A progress bar on a terminal (``--no-progress``: plain lines, as in a log file).
    progress: bool = True

    def to_json(self) -> dict[str, Any]:
        """JSON-ready view (paths as strings), for provenance."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(v) if isinstance(v, Path) else v for v in value]
            out[f.name] = value
        return out
