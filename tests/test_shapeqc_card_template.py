"""The ShapeQC model card, rendered from ``shapeqc_card.md.j2`` with small synthetic results."""

from __future__ import annotations

import configparser
import fnmatch
from pathlib import Path
from typing import Any

from bids_qc.structures import SUBCORTICAL_NAMES
from bids_qc.training.shapeqc_card import render_card

ROOT = Path(__file__).resolve().parents[1]


def _row(n: int, n_fail: int, auc: float) -> dict[str, Any]:
    return {"n": n, "n_fail": n_fail, "auc": auc, "f_share": 0.25, "f_recall": 0.85,
            "fpr": 0.05}


def _results() -> dict[str, Any]:
    """A results dict shaped like ``main``'s: one weak structure, one frozen set not built."""
    test = {s: _row(320, 40, 0.95) for s in SUBCORTICAL_NAMES}
    test["right_putamen"] = _row(333, 44, 0.777)
    share = {s: 0.125 for s in SUBCORTICAL_NAMES}
    return {
        "sha256": "ab" * 32, "thresholds_sha256": "cd" * 32, "calibration_sha256": "ef" * 32,
        "version": "9.8.7", "date": "2030-01-02", "n_params": 4321,
        "thresholds": {s: 0.5 for s in SUBCORTICAL_NAMES},
        "train": {"maps": "1-14", "crops_per_map": 8, "damaged_per_crop": 3, "n_train": 800,
                  "n_train_fail": 100, "train_fail_share_by_structure": share, "n_eval": 140,
                  "n_eval_fail": 30, "width": 16, "seed": 5, "steps": 200, "batch": 32,
                  "data_minutes": 1.0, "train_minutes": 2.0},
        "eval": {"structures": {s: _row(10, 2, 0.9) for s in SUBCORTICAL_NAMES},
                 "overall": _row(140, 28, 0.91)},
        "test_maps": {"structures": test, "overall": _row(4500, 560, 0.93),
                      "overall_with_displaced": _row(5000, 700, 0.9)},
        "frozen": {"shapeqc_synth": {"built": 100, "total": 336, "errors": 0,
                                     "not_measured": True},
                   "shapeqc_unseen": {"built": 336, "total": 336, "errors": 2,
                                      "overall": _row(334, 270, 0.654)}},
        "families": {"test_maps": {"bump": {"n_fail": 61, "auc": 0.88, "f_recall": 0.7,
                                            "min_fail_severity": 0.15}}},
        "compare": None,
        "bert": {"pfail": {s: 0.01 for s in SUBCORTICAL_NAMES}, "flagged": ["left_caudate"],
                 "cpu_s": 1.5},
        "examples": {"hole": {"severity": 0.45, "dice": 0.99, "hausdorff": 3.2, "pfail": 0.98,
                              "file": "shapeqc_example_hole.png"}},
    }  # fmt: skip


def _line(text: str, start: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(start)]
    assert len(lines) == 1, (start, lines)
    return lines[0]


def test_table_2_row_holds_the_structures_figures():
    card = render_card(_results())
    assert card.startswith("# ShapeQC model card\n\n")
    assert "sha256 `" + "ab" * 32 + "`" in card and "Version 9.8.7; generated 2030-01-02." in card
    row = _line(card, "| right_putamen |")
    # eval AUC, eval n (FAIL), threshold, test AUC, test n (FAIL), F-share, F-recall,
    # time saved, F-share at 10% FAIL (0.1 * 0.85 + 0.9 * 0.05).
    assert row == ("| right_putamen | 0.900 | 10 (2) | 0.500 | 0.777 | 333 (44) | 0.25 | 0.85 | "
                   "0.75 | 0.13 |")
    assert _line(card, "| **all** |").startswith("| **all** | 0.910 | 140 (28) | | 0.930 |")
    # Only the weak structure misses a goal.
    assert "Missed:\n\n- right_putamen: AUC 0.777 < 0.9.\n\n- CPU time" in card
    assert "1.50 s (meets the 5 s goal)" in card


def test_a_frozen_set_not_built_in_full_is_not_measured():
    card = render_card(_results())
    assert _line(card, "| shapeqc_synth |") == (
        "| shapeqc_synth | 100 / 336 | not measured | | | | |")
    assert _line(card, "| shapeqc_unseen |") == (
        "| shapeqc_unseen | 336 / 336 | 2 | 334 (270) | 0.654 | 0.25 | 0.85 |")
    assert "a set not built in full is not measured for these weights:" in card
    assert "- The frozen protocol sets were not measured for these weights" in card


def test_every_set_built_and_the_rest_of_the_card():
    r = _results()
    r["frozen"]["shapeqc_synth"] = dict(r["frozen"]["shapeqc_unseen"])
    card = render_card(r)
    assert "Every case was built:" in card and "not measured" not in card
    assert "flagged 1 of 14 (left_caudate)" in card
    assert "| test_maps | bump | 61 | 0.880 | 0.70 | 0.15 |" in card
    assert "- hole: severity 0.45, Dice 0.990, Hausdorff 3.2, P(FAIL) 0.98:" in card
    assert "a sitting of 200 steps of batch 32 (global steps 0-200;" in card
    assert "from scratch, AdamW" in card and "maps 15-16, never trained on" in card
    assert "not compared in this run" in card
    # No real data: the licence section ends the card and lists no IXI.
    assert card.endswith("\n") and "\n\n## Licences\n" in card and "IXI" not in card


def test_the_template_ships_as_package_data():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["bids_qc.training"].split(",")]
    assert any(fnmatch.fnmatch("templates/shapeqc_card.md.j2", p) for p in patterns)
    assert (ROOT / "bids_qc" / "training" / "templates" / "shapeqc_card.md.j2").is_file()
