"""The training ledger: adding sittings, rendering the cards' section, keeping it in sync."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bids_qc.models.registry import REGISTRY, get_spec
from bids_qc.training import card_sections as cs
from bids_qc.training import ledger
from bids_qc.training.loop import SittingConfig, run_sitting

START, END = cs.LEDGER_MARKERS


def _sitting(out: Path, model: str = "segqc", steps: int = 2, start_step: int = 0,
             pause: float | None = None) -> Path:
    """A finished sitting of a toy network, recorded as ``model``'s."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(gstep: int) -> dict[str, float]:
        loss = net(torch.full((2, 3), float(gstep))).square().mean()
        loss.backward()
        return {"loss": float(loss.detach()), "samples": 2}

    config = SittingConfig(model=model, out=out, steps=steps, lr=0.1, seed=1,
                           start_step=start_step, warm_start="shipped segqc.pt 1.0.0 sha256 "
                           + "ab" * 32)  # fmt: skip
    run_sitting(config, net, opt, step, lambda p: torch.save(net.state_dict(), p),
                weights_name="w.pt", log=lambda m: None, pause_after_minutes=pause)  # fmt: skip
    return out


@pytest.fixture
def cards(tmp_path: Path) -> Path:
    folder = tmp_path / "cards"
    folder.mkdir()
    for spec in REGISTRY:
        shutil.copy(ledger.CARDS_DIR / f"{spec.name}.md", folder)
    return folder


def test_add_then_render_round_trip(tmp_path, cards, capsys):
    folder = tmp_path / "ledger"
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"auroc": 0.95312, "good": {"false_flags": 3, "n": 31}}))
    one = _sitting(tmp_path / "s1")
    args = ["--ledger", str(folder)]
    assert ledger.main([*args, "add", "segqc", str(one), "--evaluation", str(evaluation),
                        "--note", "first | sitting"]) == 0  # fmt: skip
    two = _sitting(tmp_path / "s2", steps=3, start_step=ledger.next_step("segqc", folder))
    assert ledger.main([*args, "add", "segqc", str(two), "--shipped"]) == 0
    saved = ledger.load("segqc", folder)["sittings"]
    assert [s["shipped"] for s in saved] == [False, True]  # not the registry's sha256; forced
    assert saved[0]["evaluation"]["auroc"] == 0.95312 and saved[1]["evaluation"] is None
    assert ledger.next_step("segqc", folder) == 5
    capsys.readouterr()
    assert ledger.main([*args, "render", "--cards", str(cards)]) == 0
    assert "segqc.md: rewritten" in capsys.readouterr().out
    text = (cards / "segqc.md").read_text()
    section = cs.section_body(text, cs.LEDGER_MARKERS)
    assert section is not None and text.count(START) == 1
    date = saved[0]["ended"][:10]
    assert (f"| {date} | 0-2 | 4 | 0.00 | {saved[0]['machine']}; 1 thread | shipped segqc.pt "
            f"1.0.0 sha256 {'ab' * 6} | auroc 0.953, good.false_flags 3, good.n 31 | no |"
            ) in section  # fmt: skip
    assert "| 2-5 | 6 |" in section
    assert f"| yes (`{saved[1]['weights_sha256'][:12]}`) |" in section
    assert "In all: 2 sittings, 5 steps, 10 samples" in section
    assert "first \\| sitting" in section  # a note cannot break the table
    # The section sits right after the card's Training section, the rest kept.
    assert text.index("## Training\n") < text.index(START) < text.index("## Limitations")
    # Rendering again changes nothing; the other models say they have no sitting yet.
    assert ledger.render(folder, cards, check=True) == []
    assert "No sitting of the shared training loop is recorded for VINN yet" in (
        cards / "vinn.md").read_text()


def test_check_fails_when_a_card_is_out_of_date(tmp_path, cards, capsys):
    folder = tmp_path / "ledger"
    args = ["--ledger", str(folder), "render", "--cards", str(cards)]
    assert ledger.main(args) == 0 and ledger.main([*args, "--check"]) == 0
    ledger.add("shapeqc", _sitting(tmp_path / "s", model="shapeqc"), folder=folder)
    capsys.readouterr()
    assert ledger.main([*args, "--check"]) == 1
    captured = capsys.readouterr()
    assert "shapeqc.md: out of date" in captured.out and "segqc.md" not in captured.out
    assert "ledger render" in captured.err
    assert ledger.main(args) == 0 and ledger.main([*args, "--check"]) == 0


def test_add_refuses_unfinished_foreign_and_repeated_sittings(tmp_path):
    folder = tmp_path / "ledger"
    with pytest.raises(ValueError, match="has not finished"):
        ledger.add("segqc", tmp_path / "none", folder=folder)
    out = _sitting(tmp_path / "s")
    with pytest.raises(ValueError, match="not of regqc"):
        ledger.add("regqc", out, folder=folder)
    ledger.add("segqc", out, folder=folder)
    with pytest.raises(ValueError, match="already in the ledger"):
        ledger.add("segqc", out, folder=folder)
    with pytest.raises(SystemExit):  # the command line reports it as a usage error
        ledger.main(["--ledger", str(folder), "add", "segqc", str(out)])
    record = json.loads((out / "sitting.json").read_text())
    del record["samples"]
    (out / "sitting.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="lacks samples"):
        ledger.add("segqc", out, folder=tmp_path / "other")


def test_a_stopped_sitting_says_how_far_it_got(tmp_path, cards):
    folder = tmp_path / "ledger"
    entry = ledger.add("segqc", _sitting(tmp_path / "s", steps=4, pause=0.0), folder=folder)
    assert entry["completed"] is False and entry["steps"] == 1
    ledger.render(folder, cards)
    assert "| 0-1 (stopped; 4 planned) | 2 |" in (cards / "segqc.md").read_text()
    assert ledger.next_step("segqc", folder) == 1


def test_shipped_cards_are_in_sync_with_the_shipped_ledgers():
    stale = ledger.render(ledger.LEDGER_DIR, ledger.CARDS_DIR, check=True)
    assert not stale, ("stale: " + ", ".join(p.name for p in stale)
                       + "; run `python -m bids_qc.training.ledger render`")
    for spec in REGISTRY:
        card = (ledger.CARDS_DIR / f"{spec.name}.md").read_text()
        assert card.count(START) == 1 and card.count(END) == 1, spec.name
        assert ledger.ledger_path(spec.name).is_file(), spec.name
        sittings = ledger.load(spec.name)["sittings"]
        if not sittings:
            assert "its training before the ledger is described in the Training section" in card
        # A sitting marked shipped holds the weights the registry ships (the last such one).
        shipped = [s for s in sittings if s["shipped"]]
        if shipped and shipped[-1]["weights_sha256"] != get_spec(spec.name).sha256:
            pytest.fail(f"{spec.name}: its last shipped sitting is not the registry's weights")


def test_regenerated_cards_keep_their_generated_sections(tmp_path):
    """A card script's fresh output lacks both generated sections; write_card carries them
    over, each where its generator puts it, so every shipped card comes back byte for byte."""
    for spec in REGISTRY:
        card = ledger.CARDS_DIR / f"{spec.name}.md"
        text = card.read_text()
        fresh = text
        for start, end in (cs.REALDATA_MARKERS, cs.LEDGER_MARKERS):
            fresh = fresh[:fresh.index(start)] + fresh[fresh.index(end) + len(end) + 2:]
        assert cs.REALDATA_MARKERS[0] not in fresh and START not in fresh
        target = tmp_path / card.name
        shutil.copy(card, target)
        ledger.write_card(target, fresh)
        assert target.read_text() == text, spec.name
    # A card written for the first time gets no section from nowhere.
    ledger.write_card(tmp_path / "new.md", "# New\n\n## Training\n\nx\n")
    assert (tmp_path / "new.md").read_text() == "# New\n\n## Training\n\nx\n"


def test_a_regenerated_card_gets_the_ledger_as_it_stands_now(tmp_path):
    """A card regenerated after ``ledger add`` carries the new sitting, not the ledger
    section its previous version held (the stale-card failure of session 10's CI)."""
    card = ledger.CARDS_DIR / "segqc.md"
    text = card.read_text()
    stale_body = "## Training ledger\n\nNo sitting of the shared training loop is recorded.\n"
    stale = ledger.replace_section(text, stale_body)
    assert stale != text
    target = tmp_path / "segqc.md"
    target.write_text(stale)
    fresh = text[:text.index(START)] + text[text.index(END) + len(END) + 2:]
    ledger.write_card(target, fresh)
    assert target.read_text() == text


def test_the_ledger_section_goes_after_training_or_before_licences():
    body = "## Training ledger\n\nL.\n"
    card = "# C\n\n## Training\n\nT.\n\n## Limits\n\nX.\n"
    out = ledger.replace_section(card, body)
    assert out == f"# C\n\n## Training\n\nT.\n\n{START}\n{body}{END}\n\n## Limits\n\nX.\n"
    assert ledger.replace_section(out, body) == out
    assert ledger.replace_section("# C\n\n## Training\n\nT.\n", body).endswith(
        f"T.\n\n{START}\n{body}{END}\n")
    assert ledger.replace_section("# C\n\n## A\n\n## Licences\n\nL\n", body) == (
        f"# C\n\n## A\n\n{START}\n{body}{END}\n\n## Licences\n\nL\n")
