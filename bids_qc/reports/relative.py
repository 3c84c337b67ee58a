"""Where an image stands in its dataset: the strips of the participant report.

At group level every image's report gets one strip per metric that has a robust z-score
(:mod:`bids_qc.robust_z`): the ``|z| <= 3.5`` band of its reference (acquisition group or
dataset), the band that holds the middle half of it (``|z| <= 0.6745``: by the definition
of the MAD, half of the images lie within one MAD of the median), the median, and a mark
where the image stands, red beyond the cut-off. The section sits between two HTML
comments (:data:`START`, :data:`END`) so that the group level can replace it in a report
written at participant level without redrawing its figures (those need the workflow's
files). Before the group level has run, or in a dataset too small for scores, the section is
one line that says so.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io import atomic_write_text
from ..robust_z import MIN_IMAGES, OUTLIER_Z, RobustZ
from ..schema import column
from .render import fmt, render

#: The comments around the section in ``<bids_name>.html``.
START = "<!-- bids_qc:relative -->"
END = "<!-- /bids_qc:relative -->"
#: The strip's z range; a mark beyond it sits at the edge, drawn as a triangle.
Z_RANGE = 6.0
#: Strip size in CSS pixels (a CSS gradient and one positioned mark: a few hundred bytes a
#: row, not an SVG each, since every report of a 100,000-image group is rewritten).
WIDTH, HEIGHT = 180, 16
#: ``|z|`` of a value one MAD from the median (half of the images lie within it).
HALF_Z = 0.6745

NOTE_NO_GROUP = ("Where this image stands in its dataset is shown here once the group "
                 "level has run (bids_qc BIDS_DIR OUTPUT_DIR group).")


@dataclass(frozen=True)
class Strips:
    """The strip rows of every image of a group, from the group level's scores.

    Parameters
    ----------
    names : dict
        bids_name -> its row in the group table.
    metrics : list of tuple
        Per metric: name, the values scored, their :class:`~bids_qc.robust_z.RobustZ`,
        and the number of images of each reference.
    n_images : int
        Images in the group.
    """

    names: dict[str, int]
    metrics: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]]
    n_images: int

    @classmethod
    def from_scores(cls, frame: pd.DataFrame,
                    details: dict[str, tuple[pd.Series, RobustZ]]) -> Strips:
        """From the group table and what :func:`bids_qc.group.add_robust_z` filled in."""
        metrics = []
        for name, (values, scored) in details.items():
            z = scored.z.to_numpy(dtype=float)
            if np.isnan(z).all():
                continue
            reference = scored.reference.astype("object").to_numpy()
            counts = pd.Series(reference[~np.isnan(z)]).value_counts().to_dict()
            median = (scored.median.to_numpy(dtype=float) if scored.median is not None
                      else np.full(len(z), np.nan))
            metrics.append((name, values.to_numpy(dtype=float), z, median, reference,
                            {str(k): int(v) for k, v in counts.items()}))
        names = {str(n): i for i, n in enumerate(frame["bids_name"].tolist())}
        return cls(names, metrics, len(frame))

    def rows(self, bids_name: str) -> list[dict[str, Any]]:
        """The strip rows of one image, in table order (metrics it has a score for)."""
        i = self.names.get(bids_name)
        if i is None:
            return []
        out = []
        for name, values, z, median, reference, counts in self.metrics:
            if math.isnan(z[i]):
                continue
            out.append(strip_row(name, float(values[i]), float(z[i]), float(median[i]),
                                 str(reference[i]), counts.get(str(reference[i]), 0)))
        return out

    def context(self, bids_name: str) -> dict[str, Any]:
        """The ``relative`` context of one image's report."""
        if self.n_images < MIN_IMAGES:
            return relative_context(note=f"The dataset has {self.n_images} image(s); "
                                    f"dataset-relative scores need at least {MIN_IMAGES}.")
        rows = self.rows(bids_name)
        if not rows:
            return relative_context(note="No dataset-relative score for this image (it has "
                                    "no metric value, or its group's values do not vary).")
        return relative_context(rows=rows)


def _x(z: float) -> float:
    return round(WIDTH / 2 + max(-Z_RANGE, min(Z_RANGE, z)) * WIDTH / (2 * Z_RANGE), 1)


def strip_row(metric: str, value: float, z: float, median: float, reference: str,
              n_reference: int) -> dict[str, Any]:
    """One strip of the table: the metric, its value and median, and where the mark sits.

    Parameters
    ----------
    metric : str
        The metric's column name.
    value, median : float
        The value scored (volumes: a share of the intracranial volume) and the median of
        its reference.
    z : float
        The image's robust z-score.
    reference : str
        ``dataset`` or the acquisition group's key.
    n_reference : int
        Images with a score in that reference.
    """
    scaled = metric.startswith("vol_") and metric != "vol_whole_brain"
    try:
        unit = column(metric).unit
    except ValueError:
        unit = ""
    if scaled:  # a share of the intracranial volume reads better in percent
        value, median, unit = 100 * value, 100 * median, "% of ICV"
    return {
        "metric": metric,
        "value": fmt(value),
        "median": fmt(median),
        "unit": unit,
        "z": f"{z:+.1f}",
        "outlier": abs(z) > OUTLIER_Z,
        "x": _x(z),
        "beyond": 1 if z > Z_RANGE else -1 if z < -Z_RANGE else 0,
        "reference": "dataset" if reference == "dataset" else f"acquisition {reference}",
        "n_reference": n_reference,
    }


def relative_context(rows: list[dict[str, Any]] | None = None,
                     note: str = NOTE_NO_GROUP) -> dict[str, Any]:
    """What ``_relative.html.j2`` draws: strips, or a one-line note when there are none."""
    geometry = {"width": WIDTH, "height": HEIGHT, "mid": _x(0.0),
                "band": (_x(-OUTLIER_Z), _x(OUTLIER_Z)), "half": (_x(-HALF_Z), _x(HALF_Z))}
    return {"rows": rows or [], "note": "" if rows else note, "cutoff": OUTLIER_Z,
            "z_range": Z_RANGE, "geometry": geometry}


def render_section(relative: dict[str, Any]) -> str:
    """The section's HTML, markers included (what the participant template includes)."""
    return render("_relative.html.j2", relative=relative)


def replace_section(report: Path, section: str) -> bool:
    """Put ``section`` in place of the report's between :data:`START` and :data:`END`.

    Returns False, leaving the file alone, when the report has no such section (written by
    an earlier bids_qc); the file is rewritten only when the section changed.
    """
    text = Path(report).read_text(encoding="utf-8")
    start = text.find(START)
    end = text.find(END, start) if start >= 0 else -1
    if end < 0:
        return False
    new = text[:start] + section.strip() + text[end + len(END):]
    if new != text:
        atomic_write_text(report, new)
    return True


def report_names(output_dir: Path) -> set[str]:
    """The participant report files in ``output_dir`` (one listing, not a stat per image)."""
    with os.scandir(output_dir) as entries:
        return {e.name for e in entries if e.name.endswith(".html")}
