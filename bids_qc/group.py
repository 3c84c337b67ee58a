"""Group level: ``group_T1w.tsv``, ``group_T1w_flagged.tsv``, ``group_T1w_queue.tsv`` and
``group_T1w.html``.

The group level reads what participant level wrote; it never recomputes a metric. This
module builds the table; the review queue and the flags table are :mod:`bids_qc.review`'s,
the report :mod:`bids_qc.reports.group`'s. Ratings (``OUTPUT_DIR/ratings_T1w.tsv``, written
by ``bids_qc-ratings`` or the demo) are read when present, as the truth of the review queue.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .io import atomic_write_text
from .ratings import RATINGS_FILE, failing_images, read_rating_file
from .reports.relative import Strips
from .review import build_review, flagged_table, queue_table
from .robust_z import RobustZ, acquisition_groups, icv_scaled, intracranial_volume, robust_z
from .schema import COLUMNS, Column, rz_columns
from .structures import STRUCTURE_NAMES

LOGGER = logging.getLogger("bids_qc")

#: With this many images or more, a volume beyond 2 SD of the mean is an outlier too.
SD_RULE_MIN_IMAGES = 10


def _listdir(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:  # missing, or not a folder
        return []


def _result_paths(output_dir: Path) -> list[str]:
    """The participant JSONs as sorted path strings (see :func:`find_result_files`).

    ``os.listdir`` per folder rather than globbing or ``Path`` objects: at 100,000
    subjects a glob's pattern matching and stat calls cost tens of seconds.
    """
    root = str(output_dir)
    files: list[str] = []
    for sub in _listdir(root):
        if not sub.startswith("sub-") or "." in sub:  # sub-*.html reports are files
            continue
        sub_dir = os.path.join(root, sub)
        for name in _listdir(sub_dir):
            if name == "anat":
                anat = os.path.join(sub_dir, name)
            elif name.startswith("ses-"):
                anat = os.path.join(sub_dir, name, "anat")
            else:
                continue
            files += [os.path.join(anat, f) for f in _listdir(anat) if f.endswith("_T1w.json")]
    return sorted(files)


def find_result_files(output_dir: Path) -> list[Path]:
    """Every participant JSON under ``output_dir`` (``sub-*/[ses-*/]anat/*_T1w.json``)."""
    return [Path(f) for f in _result_paths(output_dir)]


def _slim(data: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """What the group level uses of a participant JSON.

    The metrics, and of the provenance only the thresholds in force
    (:func:`bids_qc.reports.checks.run_thresholds` reads them); errors, warnings and input
    paths stay on disk, so 100,000 results fit in a few hundred MB. ``path`` is kept to
    reread the whole JSON where a participant report must be rendered.
    """
    prov = data.get("provenance") or {}
    options = (prov.get("fingerprint") or {}).get("options") or {}
    stages = {}
    for name, stage in (prov.get("stages") or {}).items():
        kept = {k: stage[k] for k in ("threshold", "thresholds") if k in (stage or {})}
        if kept:
            stages[name] = kept
    return {
        "bids_name": data["bids_name"],
        "reg_source": data.get("reg_source"),
        "seg_source": data.get("seg_source"),
        "qc_error": data.get("qc_error") or "",
        "metrics": data.get("metrics") or {},
        "acquisition": data.get("acquisition") or {},
        "provenance": {"fingerprint": {"options": {"thresholds": options.get("thresholds")}},
                       "stages": stages},
        "_path": str(path),
    }


def load_results(files: list[Path] | list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Parse participant JSONs (kept slim, see :func:`_slim`); unreadable ones are reported,
    not fatal."""
    results, problems = [], []
    for path in files:
        try:
            with open(path, "rb") as fh:
                data = json.loads(fh.read())
            if not isinstance(data, dict) or "bids_name" not in data:
                raise ValueError("not a bids_qc participant JSON")
            results.append(_slim(data, path))
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
    return results, problems


def outlier_bounds(values: pd.Series) -> tuple[float, float] | None:
    """The (lower, upper) bounds outside which a value is an outlier, None without values.

    1.5 IQR beyond the quartiles; with 10+ images also 2 SD from the mean, whichever bound
    is tighter. Both rules use only the images that have a value.
    """
    present = values.dropna().astype(float)
    if present.empty:
        return None
    q1, q3 = np.percentile(present, [25, 75])
    iqr = q3 - q1
    low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    if len(present) >= SD_RULE_MIN_IMAGES:
        mean, sd = present.mean(), present.std(ddof=1)
        if sd > 0:
            low, high = max(low, mean - 2 * sd), min(high, mean + 2 * sd)
    return float(low), float(high)


def outlier_flags(values: pd.Series) -> pd.Series:
    """1 beyond :func:`outlier_bounds`, 0 inside, NA if missing."""
    flags = pd.Series(pd.NA, index=values.index, dtype="Int64")
    bounds = outlier_bounds(values)
    if bounds is None:
        return flags
    present = values.dropna().astype(float)
    out = (present < bounds[0]) | (present > bounds[1])
    flags.loc[present.index] = out.astype(int)
    return flags


def volume_bounds(frame: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Volume column -> its outlier bounds in this group."""
    out = {}
    for name in STRUCTURE_NAMES:
        bounds = outlier_bounds(pd.to_numeric(frame[f"vol_{name}"], errors="coerce"))
        if bounds is not None:
            out[f"vol_{name}"] = bounds
    return out


def group_table(results: list[dict[str, Any]],
                details: dict[str, tuple[pd.Series, RobustZ]] | None = None,
                columns: tuple[Column, ...] = COLUMNS) -> pd.DataFrame:
    """One row per image, the schema's columns in their stable order, then any extra ones.

    ``details`` is filled as by :func:`add_robust_z` (indexed like the returned table);
    ``columns`` are the schema's (:func:`bids_qc.schema.build_columns` of the plugins).
    """
    records = []
    for res in results:
        row = {
            "bids_name": res["bids_name"],
            "reg_source": res.get("reg_source"),
            "seg_source": res.get("seg_source"),
            "qc_error": res.get("qc_error") or "",
        }
        row.update(res.get("metrics", {}))
        records.append(row)
    participant_cols = [c.name for c in columns if c.level == "participant"]
    frame = pd.DataFrame.from_records(records)
    # columns no result has (a model that did not run, IQMs of older results) join in one
    # concat: one insert per column fragments a frame of 200+ columns
    missing = [c for c in participant_cols if c not in frame.columns]
    if missing:
        frame = pd.concat([frame, pd.DataFrame(
            {c: pd.Series([None] * len(frame), index=frame.index, dtype=object)
             for c in missing})], axis=1)
    extra = sorted(c for c in frame.columns if c not in participant_cols)
    frame = frame[participant_cols + extra].sort_values("bids_name", kind="stable")
    frame = frame.reset_index(drop=True)
    outliers = {}
    for name in STRUCTURE_NAMES:
        frame[f"vol_{name}"] = pd.to_numeric(frame[f"vol_{name}"], errors="coerce")
        outliers[f"vol_{name}_outlier"] = outlier_flags(frame[f"vol_{name}"])
    frame = pd.concat([frame, pd.DataFrame(outliers, index=frame.index)], axis=1)
    sidecars = {r["bids_name"]: r.get("acquisition") or {} for r in results}
    frame = add_robust_z(frame, acquisition_keys(frame["bids_name"], sidecars), details, columns)
    ordered = [c.name for c in columns] + extra
    return frame[ordered]


_ACQ_ENTITIES = re.compile(r"_(acq|run)-([a-zA-Z0-9]+)")
#: Sidecar fields (kept in the participant JSON's ``acquisition``) that tell scanners apart.
SIDECAR_KEYS = ("Manufacturer", "MagneticFieldStrength")


def acquisition_keys(names: pd.Series, sidecars: dict[str, dict[str, Any]] | None = None
                     ) -> pd.Series | None:
    """Each image's acquisition group, from its entities and sidecar fields.

    Parameters
    ----------
    names : pd.Series
        The ``bids_name`` of each image (its ``acq`` and ``run`` entities are read).
    sidecars : dict, optional
        bids_name -> the ``acquisition`` object of its participant JSON
        (:data:`SIDECAR_KEYS`); images without one count as ``n/a``.

    Returns
    -------
    pd.Series or None
        One key per image (same index), None when nothing distinguishes the images.
    """
    sidecars = sidecars or {}
    entities = names.map(lambda n: dict(_ACQ_ENTITIES.findall(str(n))))
    parts = {"acquisition": entities.map(lambda e: e.get("acq")),
             # run-1 and run-01 are the same run
             "run": entities.map(lambda e: e["run"].lstrip("0") or "0" if "run" in e else None)}
    for key in SIDECAR_KEYS:
        parts[key] = names.map(lambda n, k=key: _sidecar_value(sidecars.get(n, {}).get(k)))
    return acquisition_groups(pd.DataFrame(parts, index=names.index))


def _sidecar_value(value: Any) -> str | None:
    """A sidecar field as a group key: 3 and 3.0 T are one field strength, case is noise."""
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{float(value):g}"
    return str(value).strip().lower() or None


def add_robust_z(frame: pd.DataFrame, groups: pd.Series | None = None,
                 details: dict[str, tuple[pd.Series, RobustZ]] | None = None,
                 columns: tuple[Column, ...] = COLUMNS) -> pd.DataFrame:
    """``frame`` with the ``rz_*`` scores of :mod:`bids_qc.robust_z`, ``rz_noutliers`` and
    ``rz_outliers``.

    Volumes (but ``vol_whole_brain``) are divided by the intracranial volume first
    (:func:`bids_qc.robust_z.intracranial_volume`: FreeSurfer's eTIV where the image has
    it, else ``vol_whole_brain`` on eTIV's scale), so that big heads do not read as big
    structures. The scores are advisory: no flag or check reads them (the review queue
    orders unflagged images by them, :mod:`bids_qc.review`). Warnings are logged once per
    reason, not once per column.

    Parameters
    ----------
    frame : pd.DataFrame
        The group table, with every metric column of the schema.
    groups : pd.Series, optional
        Each image's acquisition group (:func:`acquisition_keys`); None: one dataset.
    details : dict, optional
        Filled with metric -> (the values scored, their :class:`RobustZ`), for the
        participant reports' strips.
    columns : tuple of Column
        The schema, whose ``rz_*`` columns say which metrics are scored.
    """
    icv = intracranial_volume(frame["etiv_mm3"], frame["vol_whole_brain"])
    warned: set[str] = set()
    hits = pd.Series("", index=frame.index, dtype="object")
    scores = {}
    for metric, col in rz_columns(columns).items():
        values = pd.to_numeric(frame[metric], errors="coerce")
        if metric.startswith("vol_") and metric != "vol_whole_brain":
            values = icv_scaled(values, icv)
        scored = robust_z(values, groups, name=metric)
        scores[col] = scored.z
        if details is not None:
            details[metric] = (values, scored)
        for text in scored.warnings:
            reason = text.split(": ", 1)[1]
            if reason not in warned:  # "only 3 image(s) have a value" once, not per metric
                LOGGER.warning("dataset-relative outliers: %s", text)
            if "image(s) have a value" in reason:
                warned.add(reason)
        out = scored.outliers().fillna(0).astype(bool)
        hits[out] = hits[out] + " " + metric
    # one concat (a column at a time fragments a frame of 100+ columns)
    scores["rz_outliers"] = hits.str.strip()
    scores["rz_noutliers"] = hits.str.split().map(len).astype("int64")
    return pd.concat([frame, pd.DataFrame(scores, index=frame.index)], axis=1)


_SPECIAL = re.compile('[\t\n\r"]')


def _tsv_cell(text: str) -> str:
    """A string cell as ``csv`` writes it (quoted only when it holds a separator or quote)."""
    if _SPECIAL.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def _tsv_column(values: pd.Series) -> list[str]:
    """One column's cells: floats as ``%.10g``, integers and flags as integers, ``n/a``."""
    dtype = values.dtype
    if pd.api.types.is_float_dtype(dtype):
        return ["n/a" if v != v else f"{v:.10g}" for v in values.to_numpy(dtype=float).tolist()]
    if pd.api.types.is_bool_dtype(dtype) and not isinstance(dtype, pd.BooleanDtype):
        return [str(v) for v in values.tolist()]
    if pd.api.types.is_integer_dtype(dtype) and isinstance(dtype, np.dtype):
        return values.to_numpy().astype(str).tolist()  # no missing values
    if pd.api.types.is_integer_dtype(dtype):  # nullable (flags)
        numbers = values.to_numpy(dtype=float, na_value=np.nan)
        missing = np.isnan(numbers)
        text = np.where(missing, 0, numbers).astype(np.int64).astype(str).astype(object)
        text[missing] = "n/a"
        return text.tolist()
    return ["n/a" if v is None or v is pd.NA or (isinstance(v, float) and v != v)
            else _tsv_cell(str(v)) for v in values.to_numpy(dtype=object).tolist()]


def to_tsv(frame: pd.DataFrame) -> str:
    """The TSV text: ``n/a`` for missing values, flags as 0/1, floats to 10 significant digits.

    Written column by column (what ``DataFrame.to_csv(float_format="%.10g")`` writes, at
    a tenth of its time: 100,000 rows x 80 columns take seconds, not half a minute).
    """
    header = "\t".join(_tsv_cell(str(c)) for c in frame.columns)
    columns = [_tsv_column(frame[c]) for c in frame.columns]
    body = ["\t".join(row) for row in zip(*columns, strict=True)] if columns else []
    return "\n".join([header, *body]) + "\n"


def _ensure_participant_reports(results: list[dict[str, Any]], output_dir: Path,
                                strips: Strips | None = None) -> None:
    """Render the report of any JSON that has none (an image whose workflow was killed gets
    its JSON from the runner only), so that every link of the group report opens; with
    ``strips``, put each image's dataset-relative section into the reports that exist.

    Existing reports keep their figures (drawn from the workflow's files, which the group
    level does not have): only the section between the markers of
    :mod:`bids_qc.reports.relative` is replaced.
    """
    from .reports.participant import write_participant_report
    from .reports.relative import render_section, replace_section, report_names

    present = report_names(output_dir)
    unmarked = 0
    for res in results:
        name = res["bids_name"]
        relative = strips.context(name) if strips is not None else None
        try:
            if f"{name}.html" not in present:
                full = json.loads(Path(res["_path"]).read_text()) if "_path" in res else res
                write_participant_report(full, output_dir, relative=relative)
            elif relative is not None:
                html = Path(output_dir) / f"{name}.html"
                unmarked += not replace_section(html, render_section(relative))
        except Exception as exc:  # the group tables must not depend on a report
            LOGGER.warning("could not render the report of %s: %s", name, exc)
    if unmarked:
        LOGGER.warning("%d participant report(s) were written by an earlier bids_qc and have "
                       "no place for the dataset-relative strips; rerun participant level "
                       "(or delete them: the group level then renders them, without figures) "
                       "to add it", unmarked)


def read_truth(output_dir: Path) -> tuple[dict[str, bool], Path | None, str | None]:
    """bids_name -> truly failing, from ``OUTPUT_DIR/ratings_T1w.tsv`` when present.

    A malformed ratings file does not stop the group level (the tables do not need it):
    its problem is returned, logged and shown in the report.
    """
    path = Path(output_dir) / RATINGS_FILE
    if not path.is_file():
        return {}, None, None
    try:
        return failing_images(read_rating_file(path)), path, None
    except ValueError as exc:
        LOGGER.warning("ratings ignored: %s", exc)
        return {}, None, str(exc)


def write_group_outputs(output_dir: Path) -> tuple[Path, Path, pd.DataFrame, list[str]]:
    """Write ``group_T1w.tsv``, ``group_T1w_flagged.tsv``, ``group_T1w_queue.tsv`` and
    ``group_T1w.html``.

    Raises
    ------
    FileNotFoundError
        If ``output_dir`` holds no participant results.
    """
    from .reports.group import render_group_report

    results, problems = load_results(_result_paths(output_dir))
    if not results:
        raise FileNotFoundError(
            f"No participant results (sub-*/anat/*_T1w.json) in {output_dir}; run participant "
            "level first."
        )
    details: dict[str, tuple[pd.Series, RobustZ]] = {}
    frame = group_table(results, details)
    _ensure_participant_reports(results, Path(output_dir), Strips.from_scores(frame, details))
    truth, truth_file, truth_problem = read_truth(output_dir)
    review = build_review(results, frame, volume_bounds(frame), truth)
    out = Path(output_dir)
    tsv = out / "group_T1w.tsv"
    atomic_write_text(tsv, to_tsv(frame))
    atomic_write_text(out / "group_T1w_flagged.tsv", to_tsv(flagged_table(review.checks)))
    atomic_write_text(out / "group_T1w_queue.tsv", to_tsv(queue_table(review.queue)))
    html = out / "group_T1w.html"
    atomic_write_text(html, render_group_report(frame, review, truth_file, truth_problem))
    return tsv, html, frame, problems
