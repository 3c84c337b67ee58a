"""Human ratings: ``bids_qc-ratings OUTPUT_DIR RATINGS...`` merges them into ``ratings_T1w.tsv``.

Inputs are the JSONs that a participant report's "download ratings" button saves, or TSVs
with at least ``bids_name``, ``check`` and ``rating`` (``PASS``/``FAIL``) columns. A check
is named by its flag column (``regqc_flag``, ``segqc_flag``, ``shapeqc_flag_<structure>``).

Merging keeps one rating per image, check and rater; a later file replaces an earlier
rating of the same rater (the existing ``ratings_T1w.tsv`` comes first). Where raters
disagree, an image-check counts as failing when any rater failed it (QC errs towards review).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import exitcodes
from .io import atomic_write_text
from .reports.checks import is_check, model_check_names

RATINGS_FILE = "ratings_T1w.tsv"
COLUMNS = ("bids_name", "check", "rating", "rater", "artefacts", "comment", "source", "timestamp")
_NAME = re.compile(r"^sub-[A-Za-z0-9]+(_[a-z]+-[A-Za-z0-9]+)*_T1w$")


def _row(
    path: Path, where: str, bids_name: Any, check: Any, rating: Any, **extra: Any
) -> dict[str, str]:
    """One validated rating row; ValueError naming the file and the place."""
    rating = str(rating or "").strip().upper()
    if not isinstance(bids_name, str) or not _NAME.match(bids_name):
        raise ValueError(
            f"{path}: {where}: bids_name {bids_name!r} is not a T1w name such as sub-01_ses-1_T1w"
        )
    if not isinstance(check, str) or not is_check(check):
        raise ValueError(
            f"{path}: {where}: check {check!r} is not a flag column "
            f"({', '.join(model_check_names())})"
        )
    if rating not in ("PASS", "FAIL"):
        raise ValueError(f"{path}: {where}: rating {rating!r} must be PASS or FAIL")
    out = {"bids_name": bids_name, "check": check, "rating": rating}
    for key in COLUMNS[3:]:
        value = extra.get(key)
        if isinstance(value, list):
            value = "; ".join(str(v) for v in value)
        # One line per rating: tabs and newlines in comments would break the TSV.
        out[key] = re.sub(r"[\t\r\n]+", " ", str(value)) if value not in (None, "") else ""
    return out


def _from_json(path: Path, text: str) -> list[dict[str, str]]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if (
        not isinstance(data, dict)
        or data.get("format") != "bids_qc-ratings"
        or not isinstance(data.get("ratings"), list)
    ):
        raise ValueError(
            f"{path}: not a bids_qc ratings JSON (saved by a participant report's "
            "'download ratings' button)"
        )
    rows = []
    for i, r in enumerate(data["ratings"]):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: ratings[{i}] is not an object")
        rows.append(
            _row(
                path,
                f"ratings[{i}]",
                r.get("bids_name", data.get("bids_name")),
                r.get("check"),
                r.get("rating"),
                rater=r.get("rater", data.get("rater")),
                artefacts=r.get("artefacts"),
                comment=r.get("comment"),
                source=path.name,
                timestamp=data.get("timestamp"),
            )
        )
    return rows


def _from_tsv(path: Path, text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    missing = {"bids_name", "check", "rating"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(
            f"{path}: a ratings TSV needs the columns bids_name, check and rating "
            f"(missing: {', '.join(sorted(missing))})"
        )
    rows = []
    for line, r in enumerate(reader, start=2):
        extra = {k: r.get(k) for k in COLUMNS[3:]}
        extra["source"] = extra["source"] or path.name
        rows.append(_row(path, f"line {line}", r["bids_name"], r["check"], r["rating"], **extra))
    return rows


def read_rating_file(path: str | Path) -> list[dict[str, str]]:
    """The ratings in a downloaded JSON or a TSV.

    Raises
    ------
    ValueError
        If the file cannot be read or holds a bad rating (the message names the file).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it ({exc})") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        return _from_json(path, text)
    return _from_tsv(path, text)


def merge(*batches: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """One rating per (image, check, rater), later batches winning; sorted."""
    merged: dict[tuple[str, str, str], dict[str, str]] = {}
    for batch in batches:
        for row in batch:
            merged[(row["bids_name"], row["check"], row.get("rater", ""))] = row
    return [merged[k] for k in sorted(merged)]


def to_tsv(rows: Iterable[dict[str, str]]) -> str:
    """The ``ratings_T1w.tsv`` text."""
    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(r.get(c, "") for c in COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"


def failing(rows: Iterable[dict[str, str]]) -> dict[tuple[str, str], bool]:
    """(bids_name, check) -> whether it fails (any rater said FAIL)."""
    out: dict[tuple[str, str], bool] = {}
    for r in rows:
        key = (r["bids_name"], r["check"])
        out[key] = out.get(key, False) or r["rating"] == "FAIL"
    return out


def failing_images(rows: Iterable[dict[str, str]]) -> dict[str, bool]:
    """bids_name -> whether any of its rated checks fails (the truth of the review queue)."""
    out: dict[str, bool] = {}
    for (name, _), bad in failing(rows).items():
        out[name] = out.get(name, False) or bad
    return out


def ratings_from_truth(
    truth: Iterable[dict[str, Any]], rmse_mm: float = 10.0, dice: float = 0.7
) -> list[dict[str, str]]:
    """Ratings from the demo's planted truth: a registration fails beyond ``rmse_mm``, a
    segmentation when any structure's true Dice is below ``dice``."""
    rows = []
    for t in truth:
        dices = [
            float(v) for k, v in t.items() if k.startswith("true_dice_") and k != "true_dice_min"
        ]
        seg_bad = bool(dices) and min(dices) < dice
        for check, bad in (
            ("regqc_flag", float(t["true_rmse_mm"]) > rmse_mm),
            ("segqc_flag", seg_bad),
        ):
            rows.append(
                {
                    "bids_name": t["bids_name"],
                    "check": check,
                    "rating": "FAIL" if bad else "PASS",
                    "rater": "planted-truth",
                    "artefacts": "",
                    "comment": "",
                    "source": "truth.tsv",
                    "timestamp": "",
                }
            )
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also the source of the documented option list)."""
    parser = argparse.ArgumentParser(prog="bids_qc-ratings", description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path, help="the bids_qc output dataset")
    parser.add_argument(
        "ratings",
        nargs="+",
        type=Path,
        help="downloaded rating JSONs and/or TSVs (bids_name, check, rating)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``bids_qc-ratings OUTPUT_DIR RATINGS...``: merge ratings into ``ratings_T1w.tsv``."""
    ns = build_parser().parse_args(argv)
    target = ns.output_dir / RATINGS_FILE
    try:
        if not ns.output_dir.is_dir():
            raise ValueError(f"{ns.output_dir}: OUTPUT_DIR does not exist")
        batches = [read_rating_file(target)] if target.is_file() else []
        batches += [read_rating_file(p) for p in ns.ratings]
    except ValueError as exc:
        print(f"bids_qc-ratings: error: {exc}", file=sys.stderr)
        sys.exit(exitcodes.USAGE)
    rows = merge(*batches)
    atomic_write_text(target, to_tsv(rows))
    bad = sum(failing(rows).values())
    print(
        f"bids_qc-ratings: {len(rows)} rating(s) of {len({r['bids_name'] for r in rows})} "
        f"image(s) ({bad} image-check(s) failing) in {target}"
    )
    sys.exit(exitcodes.OK)
