"""Real-data card sections and the README's model table, generated from the gate's records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bids_qc.models.gate import GATE, REALDATA_DIR, passes
from bids_qc.models.registry import REGISTRY, get_spec
from bids_qc.training import realdata_card as rc

ROOT = Path(__file__).resolve().parents[1]
START, END = rc.CARD_MARKERS


def _good(n: int, flagged: int) -> dict[str, Any]:
    return {"n": n, "flagged": flagged, "rate": flagged / n, "wilson95": [0.011, 0.276],
            "no_verdict": 1, "coverage": 0.97, "flagged_images": ["sub-01_T1w"]}


def _planted(auroc: float, sensitivity: float, **extra: Any) -> dict[str, Any]:
    return {"n": 124, "positives": 80, "auroc": auroc, "sensitivity": sensitivity,
            "specificity": 0.912, "threshold": 10.0, "failure": "planted misregistration, "
            "10-30 mm", **extra}


def _record(name: str, *, flagged: int, auroc: float, sha: str | None = None,
            **extra: Any) -> dict[str, Any]:
    return {"model": name, "version": get_spec(name).version,
            "sha256": sha or get_spec(name).sha256, "date": "2026-12-07", "targets": dict(GATE),
            "good": {"calibration": _good(31, 2), "test": _good(40, flagged)},
            "planted": {"calibration": _planted(0.951, 0.85, **extra),
                        "test": _planted(auroc, 0.875, **extra)}}


def _classic() -> dict[str, Any]:
    return {"model": "classic", "date": "2026-12-07", "thresholds": {"reg_cc": 0.125,
                                                                     "reg_mi": 0.0375},
            "fitted_on": "the calibration part",
            "planted": {b: {p: {"n": 124, "positives": 80, "auroc": a, "sensitivity": 0.7,
                                "specificity": 0.6} for p in ("calibration", "test")}
                        for b, a in (("reg_cc", 0.812), ("reg_mi", 0.734))},
            "good": {b: {p: _good(40, 3) for p in ("calibration", "test")}
                     for b in ("reg_cc", "reg_mi")},
            "cases": {}}


def _write(folder: Path, *records: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for record in records:
        (folder / f"{record['model']}.json").write_text(json.dumps(record))
    return folder


def test_a_passing_record_renders_its_figures_and_turns_the_model_on(tmp_path):
    folder = _write(tmp_path / "rd", _record("segqc", flagged=1, auroc=0.937,
                                             damaged_structure_mae=0.083))
    spec = get_spec("segqc")
    assert passes("segqc", spec.sha256, folder)
    text = rc.render_section(spec, rc.realdata("segqc", folder), None, folder)
    assert text.startswith("## Real data\n")
    assert "**Gate: passes — on by default.**" in text
    assert "experimental" not in text
    # Figures of both parts, the interval, the failure definition and the targets.
    assert "| test | 40 | 1 | 2.5% (1.1%-27.6%) | 1 | 97.0% |" in text
    assert "| calibration | 31 | 2 | 6.5% (1.1%-27.6%) | 1 | 97.0% |" in text
    assert "| test | 124 | 80 | 0.937 | 0.875 | 0.912 | 10 | 0.083 |" in text
    assert "damaged-structure MAE" in text
    assert "planted misregistration, 10-30 mm" in text
    assert "false-flag rate <= 5%" in text and "AUROC >= 0.90" in text
    assert "sensitivity >= 0.80" in text


def test_a_failing_record_names_every_reason_and_regqc_gets_its_baselines(tmp_path):
    folder = _write(tmp_path / "rd", _record("regqc", flagged=5, auroc=0.871), _classic())
    records, classic = rc.load_records(folder)
    text = rc.render_section(get_spec("regqc"), records["regqc"], classic, folder)
    assert ("**Gate: not passed — experimental: flags 5 of 40 good real test images "
            "(12% > 5%); AUROC 0.871 < 0.90 on planted real failures.**") in text
    assert "damaged-structure MAE" not in text  # regqc has none
    # The baselines on the same planted cases, at their fitted thresholds.
    assert "| `reg_cc` | test | 0.125 | 0.812 | 0.700 | 0.600 | 7.5% (1.1%-27.6%) |" in text
    assert "| `reg_mi` | calibration | 0.0375 | 0.734 |" in text
    assert "fitted on the calibration part" in text
    # Other models get no baseline table.
    seg = rc.render_section(get_spec("segqc"), None, classic, folder)
    assert "reg_cc" not in seg


def test_a_missing_record_is_not_yet_measured(tmp_path):
    text = rc.render_section(get_spec("shapeqc"), None, None, tmp_path)
    assert "Not yet measured on real images; experimental." in text
    assert "Gate: passes" not in text and "|" not in text


def test_a_record_of_other_weights_says_so(tmp_path):
    folder = _write(tmp_path / "rd", _record("segqc", flagged=0, auroc=0.99, sha="ab" * 32))
    spec = get_spec("segqc")
    text = rc.render_section(spec, rc.realdata("segqc", folder), None, folder)
    assert "of other weights" in text and "`abababababab`" in text
    assert "Gate: not passed — experimental: its real-data figures are of other weights" in text
    assert not passes("segqc", spec.sha256, folder)


def test_replacing_the_section_is_idempotent_and_keeps_the_rest():
    card = "# Card\n\nWeights `w.pt`.\n\n## What it does\n\nText.\n\n## Licences\n\nTerms.\n"
    once = rc.replace_section(card, "## Real data\n\nA.\n")
    assert once.startswith("# Card\n\nWeights `w.pt`.\n\n" + START + "\n## Real data")
    assert once.endswith(END + "\n\n## What it does\n\nText.\n\n## Licences\n\nTerms.\n")
    assert rc.replace_section(once, "## Real data\n\nA.\n") == once
    twice = rc.replace_section(rc.replace_section(once, "## Real data\n\nB.\n"),
                               "## Real data\n\nB.\n")
    before, after = once.split(START)[0], once.split(END)[1]
    assert twice.split(START)[0] == before and twice.split(END)[1] == after
    assert "B." in twice and "A." not in twice
    # No section heading at all: the section goes at the end.
    assert rc.replace_section("# T\n\nx\n", "S\n") == f"# T\n\nx\n\n{START}\nS\n{END}\n"
    with pytest.raises(ValueError, match="unbalanced"):
        rc.replace_section(f"# T\n{END}\n{START}\n", "S\n")


def test_check_detects_a_stale_card_and_the_writer_fixes_it(tmp_path, capsys):
    cards = tmp_path / "cards"
    cards.mkdir()
    for spec in REGISTRY:
        shutil.copy(rc.CARDS_DIR / f"{spec.name}.md", cards)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{rc.README_MARKERS[0]}\n{rc.README_MARKERS[1]}\n\nafter\n")
    folder = tmp_path / "rd"
    args = ["--realdata", str(folder), "--cards", str(cards), "--readme", str(readme)]
    assert rc.main([*args, "--check"]) == 1  # the README's table is empty
    assert rc.main(args) == 0
    assert rc.main([*args, "--check"]) == 0
    # New figures land: the card and the README are stale until regenerated.
    _write(folder, _record("segqc", flagged=1, auroc=0.937),
           _record("regqc", flagged=5, auroc=0.871), _classic())
    capsys.readouterr()
    assert rc.main([*args, "--check"]) == 1
    out = capsys.readouterr().out
    assert "segqc.md: out of date" in out and "README.md: out of date" in out
    assert "regqc.md: out of date" in out and "vinn.md" not in out
    assert rc.main(args) == 0 and rc.main([*args, "--check"]) == 0
    table = readme.read_text()
    assert table.endswith(f"{rc.README_MARKERS[1]}\n\nafter\n")
    assert ("| SegQC | `segqc_dice_<structure>`, `segqc_dice_mean`, `segqc_flag` | yes | "
            "passes: false flags on 2.5% of 40 good real test images, AUROC 0.937 on 124 "
            "planted real failures (80 positive); [its card]") in table
    assert "**experimental**: runs only with `--models regqc`" in table
    assert "`reg_cc` AUROC 0.812, `reg_mi` AUROC 0.734" in table
    assert "Gate: passes — on by default" in (cards / "segqc.md").read_text()


def test_readme_columns_come_from_the_schema():
    table = rc.render_readme_table({}, None, REALDATA_DIR)
    assert ("`shapeqc_pfail_<structure>`, `shapeqc_flag_<structure>` (14 subcortical "
            "structures), `shapeqc_nflagged`") in table
    assert "`vol_<structure>`, `etiv_mm3`, `vol_<structure>_outlier`" in table
    assert "rz_" not in table


def test_runs_by_default_is_the_registrys_rule():
    # The README's column recomputes the registry's rule on the shipped folder.
    records, classic = rc.load_records(REALDATA_DIR)
    rows = rc.readme_context(records, classic, REALDATA_DIR)["rows"][1:]
    for spec, row in zip(REGISTRY, rows, strict=True):
        assert row["default"].startswith("**experimental**") == spec.experimental, spec.name


def test_shipped_cards_and_readme_are_up_to_date_with_the_shipped_records():
    readme = ROOT / "README.md"
    stale = rc.update(REALDATA_DIR, rc.CARDS_DIR, readme, check=True)
    assert not stale, ("stale: " + ", ".join(p.name for p in stale)
                       + "; run `python -m bids_qc.training.realdata_card`")
    text = readme.read_text()
    assert text.count(rc.README_MARKERS[0]) == 1 and "trained 52 min" not in text
    for spec in REGISTRY:
        card = (rc.CARDS_DIR / f"{spec.name}.md").read_text()
        assert card.count(START) == 1 and card.count(END) == 1
        if rc.realdata(spec.name) is None:
            assert "Not yet measured on real images; experimental." in card
