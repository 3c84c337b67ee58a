"""Group level: ``group_T1w.tsv`` and ``group_T1w.html`` from the participant JSONs.

The group level reads what participant level wrote; it never recomputes a metric.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .io import atomic_write_text
from .reports.render import fmt, render
from .schema import COLUMNS, column_names
from .structures import STRUCTURE_NAMES

LOGGER = logging.getLogger("bids_qc")

#: With this many images or more, a volume beyond 2 SD of the mean is an outlier too.
SD_RULE_MIN_IMAGES = 10


def find_result_files(output_dir: Path) -> list[Path]:
    """Every participant JSON under ``output_dir`` (``sub-*/[ses-*/]anat/*_T1w.json``)."""
    root = Path(output_dir)
    files = list(root.glob("sub-*/anat/*_T1w.json"))
    files += root.glob("sub-*/ses-*/anat/*_T1w.json")
    return sorted(files)


def load_results(files: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Parse participant JSONs; unreadable ones are reported, not fatal."""
    results, problems = [], []
    for path in files:
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or "bids_name" not in data:
                raise ValueError("not a bids_qc participant JSON")
            results.append(data)
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
    return results, problems


def outlier_flags(values: pd.Series) -> pd.Series:
    """1 beyond 1.5 IQR of the group (or beyond 2 SD with 10+ images), 0 inside, NA if missing.

    Both rules use only the images that have a value.
    """
    present = values.dropna().astype(float)
    flags = pd.Series(pd.NA, index=values.index, dtype="Int64")
    if present.empty:
        return flags
    q1, q3 = np.percentile(present, [25, 75])
    iqr = q3 - q1
    out = (present < q1 - 1.5 * iqr) | (present > q3 + 1.5 * iqr)
    if len(present) >= SD_RULE_MIN_IMAGES:
        mean, sd = present.mean(), present.std(ddof=1)
        if sd > 0:
            out |= (present - mean).abs() > 2 * sd
    flags.loc[present.index] = out.astype(int)
    return flags


def group_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per image, the schema's columns in their stable order, then any extra ones."""
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
    participant_cols = column_names("participant")
    frame = pd.DataFrame.from_records(records)
    for col in participant_cols:
        if col not in frame.columns:
            frame[col] = None
    extra = sorted(c for c in frame.columns if c not in participant_cols)
    frame = frame[participant_cols + extra].sort_values("bids_name", kind="stable")
    frame = frame.reset_index(drop=True)
    for name in STRUCTURE_NAMES:
        frame[f"vol_{name}"] = pd.to_numeric(frame[f"vol_{name}"], errors="coerce")
        frame[f"vol_{name}_outlier"] = outlier_flags(frame[f"vol_{name}"])
    ordered = [c.name for c in COLUMNS] + extra
    return frame[ordered]


def to_tsv(frame: pd.DataFrame) -> str:
    """The TSV text: ``n/a`` for missing values, flags as 0/1, floats to 10 significant digits."""
    return frame.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.10g",
                        lineterminator="\n")


def write_group_outputs(output_dir: Path) -> tuple[Path, Path, pd.DataFrame, list[str]]:
    """Write ``group_T1w.tsv`` and ``group_T1w.html``.

    Raises
    ------
    FileNotFoundError
        If ``output_dir`` holds no participant results.
    """
    files = find_result_files(output_dir)
    results, problems = load_results(files)
    if not results:
        raise FileNotFoundError(
            f"No participant results (sub-*/anat/*_T1w.json) in {output_dir}; run participant "
            "level first."
        )
    frame = group_table(results)
    tsv = Path(output_dir) / "group_T1w.tsv"
    atomic_write_text(tsv, to_tsv(frame))
    html = Path(output_dir) / "group_T1w.html"
    atomic_write_text(html, render_group_report(frame))
    return tsv, html, frame, problems


def render_group_report(frame: pd.DataFrame) -> str:
    """The group report's HTML."""
    metric_cols = [c.name for c in COLUMNS if c.level == "participant" and c.kind == "float"]
    summary = []
    for col in metric_cols:
        values = pd.to_numeric(frame[col], errors="coerce").dropna()
        if values.empty:
            continue
        summary.append({
            "name": col,
            "n": len(values),
            "median": fmt(float(values.median())),
            "q1": fmt(float(values.quantile(0.25))),
            "q3": fmt(float(values.quantile(0.75))),
            "outliers": int(frame[f"{col}_outlier"].fillna(0).sum())
            if f"{col}_outlier" in frame else None,
        })
    rows = [
        {"bids_name": r["bids_name"], "qc_error": r["qc_error"],
         "n_outliers": int(sum(int(r[c]) for c in frame.columns
                               if c.endswith("_outlier") and not pd.isna(r[c])))}
        for _, r in frame.iterrows()
    ]
    return render("group.html.j2", n_images=len(frame), summary=summary, rows=rows,
                  n_failed=sum(1 for r in rows if r["qc_error"]))
