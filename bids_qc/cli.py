"""``bids_qc BIDS_DIR OUTPUT_DIR {participant,group}``: the BIDS-App entry point.

Parses the command line into a :class:`~bids_qc.settings.Settings`, which is passed
explicitly to everything else. Exit codes follow the BIDS-Apps execution spec
(:mod:`bids_qc.exitcodes`); every non-zero exit prints one line saying what to fix.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__, exitcodes
from .errors import DatasetError, Terminated
from .models.plugin import QCModel
from .models.plugins import PLUGINS
from .runtime import prepare_runtime
from .scheduling import NIPYPE_PLUGINS
from .settings import Settings

LOGGER = logging.getLogger("bids_qc")


class UsageError(Exception):
    """A usage error (exit code 64)."""


class _Parser(argparse.ArgumentParser):
    """argparse with the BIDS-Apps usage exit code (64) instead of its own 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _default_nprocs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _models_help(plugins: tuple[QCModel, ...] = PLUGINS) -> str:
    """``--models`` help with the real default, read from the plugins."""
    installed = [p.spec for p in plugins if p.spec.is_installed() and p.role == "qc"]
    default = [m.name for m in installed if not m.experimental]
    experimental = [m.name for m in installed if m.experimental]
    text = (f"QC models to run ({', '.join(p.name for p in plugins)}); default: "
            f"{', '.join(default) or 'none'} (the classical metrics always run)")
    if experimental:
        text += f"; experimental, run only when named: {', '.join(experimental)}"
    return text


def _segment_help(plugins: tuple[QCModel, ...] = PLUGINS) -> str:
    """``--segment`` help that says what ``auto`` does in this installation."""
    vinn = next((p.spec for p in plugins if p.name == "vinn" and p.spec.is_installed()), None)
    if vinn is None:
        auto = "VINN's weights are not installed, so auto segments nothing"
    elif vinn.experimental:
        auto = ("VINN is experimental in this installation, so auto segments only with "
                "--models vinn, and then only images without a FreeSurfer-coded segmentation "
                "from a derivative")
    else:
        auto = "images without a FreeSurfer-coded segmentation from a derivative"
    return (f"segment the T1w with VINN (default auto: {auto}; always: every image, replacing "
            "the derivative's; never: off)")


def _exit_code_epilog() -> str:
    """The exit codes, from :data:`bids_qc.exitcodes.TABLE`."""
    rows = [textwrap.fill(f"{name}: {trigger}", 78, initial_indent=f"  {code:>3}  ",
                          subsequent_indent=" " * 7, break_on_hyphens=False)
            for code, (name, trigger) in exitcodes.TABLE.items()]
    return "exit codes (BIDS-Apps):\n" + "\n".join(rows)


def build_parser(plugins: tuple[QCModel, ...] = PLUGINS) -> argparse.ArgumentParser:
    """The argument parser (also the source of the documented option list).

    Parameters
    ----------
    plugins : tuple of QCModel
        The models: ``--models`` lists them, and each adds its threshold options.
    """
    p = _Parser(
        prog="bids_qc",
        description=textwrap.fill("Quality control of structural brain MRI and its derivatives "
        "(registrations, segmentations, subcortical shapes) with deep-learning QC models.", 78),
        epilog=_exit_code_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bids_dir", type=Path, help="the root of the BIDS dataset")
    p.add_argument("output_dir", type=Path, help="where outputs go (e.g. "
                   "BIDS_DIR/derivatives/bids_qc); never BIDS_DIR itself, nor another "
                   "dataset (such as BIDS_DIR/derivatives/fmriprep)")
    p.add_argument("analysis_level", help="participant (per image) or group (tables, report)")
    p.add_argument("--version", action="version", version=f"bids_qc {__version__}")

    sel = p.add_argument_group("selecting images")
    # One or the other: a file added to labels would widen a SLURM array task's selection.
    subjects = sel.add_mutually_exclusive_group()
    subjects.add_argument("--participant-label", "--participant_label", nargs="+", default=[],
                          metavar="LABEL", help="subjects to process, with or without 'sub-' "
                          "(a value is always a label, even where a file has its name)")
    subjects.add_argument("--participant-label-file", type=Path, metavar="FILE",
                          help="read the subjects to process from FILE, one label per line "
                          "(instead of --participant-label)")
    sel.add_argument("--session-label", nargs="+", default=[], metavar="LABEL",
                     help="sessions to process, with or without 'ses-'")
    sel.add_argument("--bids-filter-file", type=Path, metavar="FILE",
                     help='JSON of pybids filters, e.g. {"t1w": {"acquisition": "mprage"}}')
    sel.add_argument("--derivatives", nargs="+", type=Path, metavar="PATH",
                     help="derivative datasets to use (default: every one under "
                     "BIDS_DIR/derivatives/)")
    sel.add_argument("--seg-source", choices=["auto", "freesurfer", "fastsurfer", "fmriprep"],
                     default="auto", help="which derivative's segmentation to check (auto: "
                     "FreeSurfer, then FastSurfer, then fMRIPrep)")
    sel.add_argument("--segment", choices=["auto", "always", "never"], default="auto",
                     help=_segment_help(plugins))
    sel.add_argument("--skip-bids-validation", action="store_true",
                     help="do not require a valid dataset_description.json")
    sel.add_argument("--bids-database-dir", type=Path, metavar="DIR",
                     help="save (or reuse) the pybids index there, so cluster jobs skip indexing "
                     "(run one job first to build it; when the dataset has changed since, "
                     "jobs warn and index without it: delete DIR to rebuild)")

    mod = p.add_argument_group("models")
    mod.add_argument("--models", nargs="+", metavar="NAME",
                     help=_models_help(plugins))
    mod.add_argument("--device", default="auto", help="auto (GPU when torch sees one), cpu, "
                     "cuda or cuda:N")
    for option in (o for p in plugins for o in p.options):
        mod.add_argument(option.flag, type=_positive_float, default=option.default,
                         metavar=option.metavar, help=option.help)
    mod.add_argument("--thresholds", type=Path, metavar="FILE",
                     help="JSON of per-check thresholds (from bids_qc-calibrate, or shipped "
                     "with ShapeQC); wins over the per-model threshold options")
    mod.add_argument("--shapeqc-recall", type=_positive_float, default=None, metavar="R",
                     help="re-derive ShapeQC's per-structure thresholds for this F-recall "
                     "(0-1) from the calibration data shipped with it, without the shipped "
                     "thresholds' specificity floor (default: the shipped thresholds, F-recall "
                     "0.8 raised to that floor); --thresholds wins over it")
    mod.add_argument("--verbose-reports", action="store_true",
                     help="participant reports embed every Grad-CAM rendering, not only "
                     "those of flagged structures")

    run = p.add_argument_group("execution")
    run.add_argument("-w", "--work-dir", type=Path, metavar="DIR",
                     help="nipype working directory (kept; default: a temporary one, removed)")
    run.add_argument("--nprocs", "--n_procs", type=_positive_int, default=None,
                     help="processes to use (default: the CPUs available)")
    run.add_argument("--mem-gb", type=_positive_float, default=None,
                     help="memory MultiProc may plan for (default: what the machine has)")
    run.add_argument("--plugin-config", type=Path, metavar="FILE",
                     help="YAML with 'plugin' (MultiProc, Linear, SLURM, ...) and 'plugin_args'")
    run.add_argument("--force", action="store_true",
                     help="recompute images whose results exist and are up to date")
    run.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    run.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress bar: a line per image started and done, as when stderr "
                          "is not a terminal (e.g. a SLURM log); -v adds each image's time and "
                          "verdict under the bar")  # fmt: skip
    return p


def _read_labels(values: Sequence[str], path: Path | None) -> list[str]:
    """The participant labels: ``--participant-label``'s, or ``--participant-label-file``'s.

    As in fMRIPrep, a ``--participant-label`` value is a label even where a file of that
    name exists (``01`` in the working directory); a file is read only when
    ``--participant-label-file`` names it.

    Raises
    ------
    UsageError
        The file cannot be read or holds no label (which would select every subject), or a
        ``--participant-label`` value cannot be a BIDS label but names a file (earlier
        versions read such a value as a file of labels).
    """
    for value in values:
        label = value.strip().removeprefix("sub-")
        if not label.isalnum() and Path(value).is_file():
            raise UsageError(f"--participant-label {value}: labels are letters and digits, "
                             "and this is a file; to read labels from it, pass "
                             f"--participant-label-file {value}")
    labels = list(values)
    if path is not None:
        try:
            found = path.read_text().split()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not text"
            raise UsageError(f"--participant-label-file {path}: cannot read it ({why})") from None
        if not found:
            raise UsageError(f"--participant-label-file {path}: holds no label")
        labels.extend(found)
    return labels


def _read_filters(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"--bids-filter-file {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise UsageError(f"--bids-filter-file {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--bids-filter-file {path}: must hold a JSON object such as "
                         '{"t1w": {"acquisition": "mprage"}}')
    return data


def _read_plugin(path: Path | None, nprocs: int, mem_gb: float | None) -> tuple[str, dict]:
    plugin, args = "MultiProc", {}
    if path is not None:
        import yaml

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"--plugin-config {path}: cannot read it as YAML ({exc})") from None
        if not isinstance(data, dict) or "plugin" not in data:
            raise UsageError(f"--plugin-config {path}: needs a 'plugin' key (MultiProc, Linear, "
                             "SLURM, ...) and optional 'plugin_args'")
        # nipype accepts "SLURM" and "SLURMPlugin" alike; bids_qc compares the short name.
        plugin = str(data["plugin"]).removesuffix("Plugin")
        if plugin not in NIPYPE_PLUGINS:
            raise UsageError(f"--plugin-config {path}: unknown plugin {data['plugin']!r}; "
                             f"choose from {', '.join(NIPYPE_PLUGINS)}")
        args = dict(data.get("plugin_args") or {})
    if plugin == "MultiProc":
        args.setdefault("n_procs", nprocs)
        # Workers start from a clean server process: a worker forked from a process that
        # already ran torch (a notebook, a test session) can deadlock in OpenMP.
        args.setdefault("mp_context", "forkserver")
        if mem_gb is not None:
            args.setdefault("memory_gb", mem_gb)
    return plugin, args


def _read_thresholds(path: Path | None) -> dict[str, float]:
    if path is None:
        return {}
    from .calibrate import read_thresholds

    try:
        return read_thresholds(path)
    except ValueError as exc:
        raise UsageError(f"--thresholds {exc}") from None


def _option_thresholds(ns: argparse.Namespace,
                       plugins: tuple[QCModel, ...]) -> dict[str, float]:
    """Threshold key -> value of every plugin's threshold option (defaults included)."""
    out: dict[str, float] = {}
    options = [o for p in plugins for o in p.options]
    for option in options:
        value = getattr(ns, option.dest)
        out[option.threshold_key] = value
    for option in options:  # a None default takes its fallback option's value
        if out[option.threshold_key] is None and option.fallback_key:
            out[option.threshold_key] = out.get(option.fallback_key)
    return {k: v for k, v in out.items() if v is not None}


def _shapeqc_recall_thresholds(recall: float | None) -> dict[str, float]:
    if recall is None:
        return {}
    from .models.shapeqc import thresholds_for_recall

    try:
        found = thresholds_for_recall(recall)
    except ValueError as exc:
        raise UsageError(f"--shapeqc-recall: {exc}") from None
    return {f"shapeqc_pfail_{s}": v for s, v in found.items()}


def _other_dataset(output_dir: Path) -> str | None:
    """What other dataset ``output_dir`` holds, or None when it holds none or bids_qc's.

    bids_qc writes its own ``dataset_description.json`` into OUTPUT_DIR, so a folder whose
    description another pipeline (GeneratedBy, or the older PipelineDescription) or no
    pipeline (a raw dataset) wrote would lose it.
    """
    path = output_dir / "dataset_description.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return "a dataset_description.json that is not readable JSON"
    if not isinstance(data, dict):
        return "a dataset_description.json that is not a JSON object"
    generated = data.get("GeneratedBy")
    entries = [*(generated if isinstance(generated, list) else [generated]),
               data.get("PipelineDescription")]
    names = [str(e["Name"]) for e in entries if isinstance(e, dict) and e.get("Name")]
    if any(n.lower() == "bids_qc" for n in names):
        return None
    if names:
        return f"the derivative dataset of {', '.join(names)}"
    return "a dataset that bids_qc did not generate"


def _check_output_dir(bids_dir: Path, output_dir: Path) -> None:
    """Refuse an OUTPUT_DIR that is, or lies inside, BIDS_DIR, or holds another dataset.

    Raises
    ------
    UsageError
        Exit code 64; nothing has been written.
    """
    bids = bids_dir.resolve()
    out = output_dir.resolve()
    if out == bids:
        raise UsageError(f"OUTPUT_DIR {output_dir} is BIDS_DIR; write to "
                         f"{bids_dir}/derivatives/bids_qc or outside the dataset")
    if bids in out.parents and (bids / "derivatives") not in out.parents:
        raise UsageError(f"OUTPUT_DIR {output_dir} lies inside BIDS_DIR; write to "
                         f"{bids_dir}/derivatives/bids_qc or outside the dataset")
    other = _other_dataset(output_dir)
    if other is not None:
        raise UsageError(f"OUTPUT_DIR {output_dir} holds {other}, whose "
                         "dataset_description.json bids_qc would overwrite; write to a folder "
                         f"of its own, e.g. {bids_dir}/derivatives/bids_qc")


def parse_settings(argv: Sequence[str] | None = None,
                   plugins: tuple[QCModel, ...] = PLUGINS) -> Settings:
    """Parse the command line into Settings.

    ``plugins`` are the models the command line knows (their names and threshold options).

    Raises
    ------
    UsageError
        Exit code 64.
    DatasetError
        Exit code 17 for an unknown analysis level.
    """
    from .bids import normalise_labels

    ns = build_parser(plugins).parse_args(argv)
    if ns.analysis_level not in ("participant", "group"):
        raise DatasetError(f"analysis level {ns.analysis_level!r} is unknown: use participant "
                           "or group", exitcodes.UNKNOWN_LEVEL)
    if ns.models:
        known = [p.name for p in plugins]
        unknown = [m for m in ns.models if m not in known]
        if unknown:
            raise UsageError(f"--models: unknown {', '.join(unknown)}; choose from "
                             f"{', '.join(known)}")
    nprocs = ns.nprocs or _default_nprocs()
    plugin, plugin_args = _read_plugin(ns.plugin_config, nprocs, ns.mem_gb)
    labels = _read_labels(ns.participant_label, ns.participant_label_file)
    return Settings(
        bids_dir=ns.bids_dir.absolute(),
        output_dir=ns.output_dir.absolute(),
        analysis_level=ns.analysis_level,
        participant_label=normalise_labels(labels, "sub-"),
        session_label=normalise_labels(ns.session_label, "ses-"),
        bids_filters=_read_filters(ns.bids_filter_file),
        derivatives=tuple(p.absolute() for p in ns.derivatives) if ns.derivatives else None,
        seg_source=ns.seg_source,
        models=tuple(ns.models) if ns.models else None,
        device=ns.device,
        work_dir=ns.work_dir.absolute() if ns.work_dir else None,
        nprocs=nprocs,
        mem_gb=ns.mem_gb,
        plugin=plugin,
        plugin_args=plugin_args,
        skip_bids_validation=ns.skip_bids_validation,
        bids_database_dir=ns.bids_database_dir.absolute() if ns.bids_database_dir else None,
        force=ns.force,
        # A thresholds file wins over the per-model threshold options.
        thresholds={**_option_thresholds(ns, plugins),
                    **_shapeqc_recall_thresholds(ns.shapeqc_recall),
                    **_read_thresholds(ns.thresholds)},
        shapeqc_recall=ns.shapeqc_recall,
        verbose_reports=ns.verbose_reports,
        verbosity=ns.verbose - ns.quiet,
        segment=ns.segment,
        progress=not ns.no_progress,
    )


def _setup_logging(verbosity: int) -> None:
    level = logging.INFO - 10 * verbosity
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s bids_qc %(levelname)s: %(message)s",
                                           "%H:%M:%S"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(max(logging.DEBUG, min(level, logging.ERROR)))
    LOGGER.propagate = False


def run(argv: Sequence[str] | None = None) -> int:
    """Run bids_qc and return its exit code (``main`` exits with it)."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")  # no telemetry request: offline clusters
    try:
        settings = parse_settings(argv)
        _setup_logging(settings.verbosity)
        _check_output_dir(settings.bids_dir, settings.output_dir)
        # Before matplotlib/torch/nipype load: caches need a writable home (containers).
        if prepare_runtime(settings.work_dir) is None:
            return _fail(exitcodes.CANT_CREATE, "no writable temporary folder (TMPDIR, /tmp, "
                         "/var/tmp): mount one (docker --tmpfs /tmp) or pass a writable -w DIR")
        if settings.analysis_level == "group":
            from .runner import run_group

            return run_group(settings)
        from .runner import run_participant

        return run_participant(settings)
    except UsageError as exc:
        return _fail(exitcodes.USAGE, str(exc))
    except DatasetError as exc:
        return _fail(exc.exit_code, str(exc))
    except KeyboardInterrupt as exc:
        # 128 + signal number, as a shell reports it: 130 for Ctrl-C, 143 for SIGTERM.
        code = 128 + exc.signum if isinstance(exc, Terminated) else exitcodes.INTERRUPTED
        return _fail(code, "interrupted; finished images are kept, rerun to resume")


def _fail(code: int, message: str) -> int:
    print(f"bids_qc: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point."""
    sys.exit(run(argv))


if __name__ == "__main__":  # pragma: no cover
    main()
