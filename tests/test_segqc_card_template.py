"""The SegQC model card rendered through its jinja2 template from synthetic results."""

from __future__ import annotations

import configparser
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from bids_qc.structures import STRUCTURE_NAMES
from bids_qc.training.licences import licence_section
from bids_qc.training.segqc_card import LICENCE_SOURCES, render_card

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"preprocess_s": 0.5081, "network_s": 0.1419, "total_s": 0.65}


def _detection(acc: float, sens: float | None, spec: float) -> dict[str, Any]:
    return {"accuracy": acc, "sensitivity": sens, "specificity": spec, "positives": 3,
            "negatives": 77}  # fmt: skip


def _metrics(n: int, mae: float) -> dict[str, Any]:
    """A :func:`bids_qc.training.segqc_card.metrics` result with chosen figures."""
    per = {s: {"mae": mae, "sd": 0.132, "r": 0.861, "true_mean": 0.9, "n": n}
           for s in STRUCTURE_NAMES}  # fmt: skip
    per["whole_brain"]["r"] = None
    return {"n_cases": n, "mae_mean": mae, "sd_mean": 0.052, "r_mean": 0.925,
            "const_mae_mean": 0.117, "mae_structure_avg": 0.061, "mae_structure_max": 0.1,
            "r_all": 0.896, "per_structure": per,
            "detection": _detection(0.9375, 0.64, 0.996),
            "detection_case": _detection(0.76, None, 1.0)}  # fmt: skip


def _results() -> dict[str, Any]:
    """``bert_damage`` measured (two families, one held out); no other set."""
    res = _metrics(4, 0.046)
    res["families"] = ["erosion", "kmeans"]
    res["by_family"] = {"erosion": _metrics(2, 0.044), "kmeans": _metrics(2, 0.016)}
    res["protocol_cases"] = 4
    return {"bert_damage": res}


def _train(**extra: Any) -> dict[str, Any]:
    return {"pool_cases": 160, "maps": [1, 2, 16], "contrasts": ["t1", "t1_wide"],
            "n_damage_p": [0.15, 0.55, 0.22, 0.08], "training_damage_families": ["erosion"],
            "heldout_damage_families": ["kmeans", "leak"], "steps": 900, "batch": 8,
            "samples": 7200, "epochs_over_pool": 45.0, "minutes": 73.31,
            "hardware": "2-core CPU, no GPU", "seed": 7, **extra}  # fmt: skip


def test_card_with_a_set_measured_and_one_missing() -> None:
    train = _train(real_people=60, real_share=0.5, plant_p=0.3, sitting=1, start_step=888,
                   warm_start="shipped segqc.pt 1.0.0")  # fmt: skip
    card = render_card(_results(), TIMING, train, "f" * 64, "1.1.0",
                       {"segqc_synth": [52, 320]})  # fmt: skip
    assert card.startswith("# SegQC model card\n\n- Model: `segqc` 1.1.0; weights `segqc.pt`, "
                           f"sha256 `{'f' * 64}` (fp16 storage).\n")  # fmt: skip
    lines = card.splitlines()
    # Targets: the measured set only, with its status; timing formatted.
    assert "| MAE of the mean Dice, bert_damage | 0.046 | <= 0.05 | met |" in lines
    assert "| worst per-structure MAE, bert_damage | 0.100 | <= 0.08 | missed |" in lines
    assert ("| accuracy of Dice < 0.7 (structures), bert_damage | 0.938 | >= 0.95 | missed |"
            in lines)  # fmt: skip
    assert "| CPU time per image (2 threads, 256^3 input) | 0.650 | <= 0.6 | missed |" in lines
    assert "| GPU time per image | n/a | <= 0.04 | not measured |" in lines
    assert not any("segqc_synth |" in line for line in lines)
    assert "preprocessing 0.508 s, network 0.142 s" in card
    # The measured set's row (n/a for a rate without positives), then the missing set.
    row = ("| bert_damage | 4 (4) | 0.046 (0.052) | 0.117 | 0.925 | 0.061 / 0.100 | 0.896 | "
           "0.938 / 0.640 / 0.996 | 0.760 / n/a / 1.000 |")  # fmt: skip
    i = lines.index(row)
    assert lines[i + 1] == ""
    assert lines[i + 2].startswith("Not measured for these weights")
    assert lines[i + 2].endswith(": segqc_synth (52 of 320 cases built).")
    assert lines[i + 3:i + 5] == ["", "## Results by damage family (held-out families: "
                                      "kmeans, leak)"]  # fmt: skip
    assert ("| bert_damage | kmeans | yes | 2 | 0.016 | 0.061 | 0.896 | 0.938 / 0.640 / 0.996 |"
            in lines)  # fmt: skip
    assert "| bert_damage | erosion | no | 2 | 0.044 | 0.061 | 0.896 | " in card
    # Per structure: only the measured set has a column.
    assert "| structure | bert_damage MAE (SD), r |\n|---|---|\n" in card
    assert "| left_thalamus | 0.046 (0.132), 0.86 |" in lines
    assert "| whole_brain | 0.046 (0.132), n/a |" in lines
    # Training: real data, the sitting, figures formatted.
    assert "maps 1-16 (contrasts t1, t1_wide)" in card
    assert "probabilities [0.15, 0.55, 0.22, 0.08]" in card
    assert "60 IXI people (whole-head T1w" in card and "in 50% of the samples" in card
    assert "with probability 0.3 per damage" in card
    assert "(45.0 epochs over the pool), 73.3 minutes on 2-core CPU, no GPU; seed 7." in card
    assert "- Sitting: global steps 888-1788, from shipped segqc.pt 1.0.0; recipe " in card
    assert "60 real IXI T1w people" in card
    assert card.endswith("T2-like contrast.\n\n" + licence_section(LICENCE_SOURCES))
    assert "{{" not in card and "{%" not in card and "\n\n\n" not in card


@pytest.mark.parametrize("missing", [None, {}])
def test_card_without_missing_sets_real_data_or_sitting(missing: Any) -> None:
    card = render_card(_results(), TIMING, _train(), "0" * 64, "1.0.0", missing)
    assert "Not measured for these weights" not in card
    assert ("0.760 / n/a / 1.000 |\n\n## Results by damage family (held-out families: "
            "kmeans, leak)\n") in card  # fmt: skip
    assert "IXI" not in card.split("## Licences")[0]
    assert "- Recipe: `python -m bids_qc.training.segqc --minutes N --out DIR`" in card
    assert "- Sitting:" not in card
    assert "- Trained on synthetic T1-like contrasts only; see `segqc_t2_shift`" in card
    assert "\n\n\n" not in card


def test_card_with_no_set_measured() -> None:
    missing = {"segqc_synth": [0, 320], "bert_damage": [10, 100]}
    card = render_card({}, TIMING, _train(), "0" * 64, "1.0.0", missing)
    assert "| MAE of the mean Dice" not in card
    assert ": segqc_synth (0 of 320 cases built), bert_damage (10 of 100 cases built)." in card
    assert "| CPU time per image (2 threads, 256^3 input) | 0.650 |" in card


def test_template_ships_with_the_package() -> None:
    assert (ROOT / "bids_qc" / "training" / "templates" / "segqc_card.md.j2").is_file()
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    globs = [g.strip() for g in cfg["options.package_data"]["bids_qc.training"].split(",")]
    assert any(fnmatch("templates/segqc_card.md.j2", g) for g in globs)
