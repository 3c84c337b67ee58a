"""The training ledger: every sitting of every model, committed, and shown in its card.

Training accumulates over sittings (:mod:`bids_qc.training.loop`): each one continues the
shipped weights on the next stretch of the data stream. The ledger keeps their records, so a
card says how much training its weights hold and where it ran.

``python -m bids_qc.training.ledger add MODEL SITTING_DIR [--evaluation JSON]
[--shipped | --not-shipped] [--note TEXT]``
    appends ``SITTING_DIR/sitting.json`` (with the evaluation on the real calibration part,
    a JSON object of figures, and whether its weights shipped: by default, whether their
    sha256 is the registry's) to ``bids_qc/models/cards/ledger/<MODEL>.json``.
``python -m bids_qc.training.ledger render [--check]``
    writes the ``## Training ledger`` section of every card, between
    ``<!-- ledger:start -->`` and ``<!-- ledger:end -->`` (after its ``## Training`` section
    when the markers are absent; :mod:`bids_qc.training.card_sections`); ``--check`` writes
    nothing and exits 1 when a card is out of date.
``python -m bids_qc.training.ledger next-step MODEL``
    prints the global step the next sitting starts at (its ``--start-step``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from bids_qc.models.registry import REGISTRY, get_spec
from bids_qc.training.card_sections import (
    LEDGER_MARKERS,
    after_section,
    environment,
    keep_generated,
)
from bids_qc.training.card_sections import replace_section as _replace
from bids_qc.training.loop import RECORD

#: The shipped cards and their ledgers (package data).
CARDS_DIR = Path(str(resources.files("bids_qc.models") / "cards"))
LEDGER_DIR = CARDS_DIR / "ledger"
FORMAT = "bids_qc-training-ledger"
#: Fields a sitting record must hold to be added.
REQUIRED = ("model", "started", "ended", "start_step", "end_step", "steps", "samples",
            "cpu_hours", "machine", "warm_start", "weights_sha256")  # fmt: skip
_SHA = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{52}\b")


def ledger_path(model: str, folder: Path = LEDGER_DIR) -> Path:
    """The ledger file of a model."""
    return Path(folder) / f"{model}.json"


def load(model: str, folder: Path = LEDGER_DIR) -> dict[str, Any]:
    """A model's ledger (empty when it has no file yet)."""
    path = ledger_path(model, folder)
    if not path.is_file():
        return {"format": FORMAT, "model": model, "sittings": []}
    ledger = json.loads(path.read_text(encoding="utf-8"))
    if ledger.get("format") != FORMAT or ledger.get("model") != model:
        raise ValueError(f"{path} is not the training ledger of {model}")
    return ledger


def _write(ledger: dict[str, Any], folder: Path) -> Path:
    path = ledger_path(ledger["model"], folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ledger, indent=1) + "\n", encoding="utf-8")
    return path


def add(model: str, sitting_dir: Path, evaluation: dict[str, Any] | None = None,
        shipped: bool | None = None, note: str = "", folder: Path = LEDGER_DIR
        ) -> dict[str, Any]:  # fmt: skip
    """Append a finished sitting to a model's ledger; returns the new entry.

    Parameters
    ----------
    model : str
        A registered model.
    sitting_dir : Path
        The sitting's output folder (its ``sitting.json``).
    evaluation : dict, optional
        Figures measured on the real calibration part (flat or nested; numbers and text).
    shipped : bool, optional
        Whether its weights shipped; None: whether their sha256 is the registry's.
    note : str
        A line for the card.
    folder : Path
        The ledger folder.

    Raises
    ------
    ValueError
        If the record is incomplete, of another model, or already in the ledger.
    """
    spec = get_spec(model)
    path = Path(sitting_dir) / RECORD
    if not path.is_file():
        raise ValueError(f"{path} does not exist: the sitting has not finished")
    record = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    if record["model"] != model:
        raise ValueError(f"{path} is a sitting of {record['model']}, not of {model}")
    if evaluation is not None and not isinstance(evaluation, dict):
        raise ValueError("the evaluation must be a JSON object of figures")
    ledger = load(model, folder)
    for old in ledger["sittings"]:
        if (old["started"], old["weights_sha256"]) == (record["started"],
                                                       record["weights_sha256"]):
            raise ValueError(f"{path} is already in the ledger of {model}")
    if shipped is None:
        shipped = record["weights_sha256"] == spec.sha256
    entry = {**record, "evaluation": evaluation, "shipped": bool(shipped), "note": note}
    ledger["sittings"].append(entry)
    _write(ledger, folder)
    return entry


def next_step(model: str, folder: Path = LEDGER_DIR) -> int:
    """The global step after every recorded sitting (where the next one's data starts)."""
    return max((int(s["end_step"]) for s in load(model, folder)["sittings"]), default=0)


# ---------------------------------------------------------------------------------- rendering

def _cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _figure(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.3g}"


def evaluation_text(evaluation: dict[str, Any] | None, prefix: str = "") -> str:
    """``auroc 0.953, good.false_flags 3``: the scalar figures of an evaluation, in order."""
    if not evaluation:
        return "not measured"
    parts = []
    for key, value in evaluation.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            parts.append(evaluation_text(value, f"{name}."))
        elif value is None or isinstance(value, (str, int, float)):
            parts.append(f"{name} {_figure(value)}")
    return ", ".join(p for p in parts if p) or "not measured"


def section_context(model: str, folder: Path = LEDGER_DIR) -> dict[str, Any]:
    """Everything the ledger template shows for one model."""
    from bids_qc.models.plugins import get_plugin

    sittings = load(model, folder)["sittings"]
    rows, notes = [], []
    for s in sittings:
        steps = f"{s['start_step']}-{s['end_step']}"
        if not s.get("completed", True):  # stopped early: its record says how far it got
            steps += f" (stopped; {s.get('planned_steps', '?')} planned)"
        threads = s.get("threads")
        machine = s["machine"] + (f"; {threads} thread{'s' if threads != 1 else ''}"
                                  if threads else "")  # fmt: skip
        rows.append({
            "date": str(s["ended"])[:10], "steps": steps, "samples": str(s["samples"]),
            "cpu_hours": f"{float(s['cpu_hours']):.2f}", "machine": _cell(machine),
            "warm_start": _cell(_SHA.sub(r"\1", str(s["warm_start"]))),
            "evaluation": _cell(evaluation_text(s.get("evaluation"))),
            "shipped": f"yes (`{s['weights_sha256'][:12]}`)" if s.get("shipped") else "no",
        })  # fmt: skip
        if s.get("note"):
            notes.append(_cell(f"{str(s['ended'])[:10]}, steps {steps}: {s['note']}"))
    total = {"sittings": len(sittings), "steps": sum(int(s["steps"]) for s in sittings),
             "samples": sum(int(s["samples"]) for s in sittings),
             "cpu_hours": f"{sum(float(s['cpu_hours']) for s in sittings):.2f}"}  # fmt: skip
    return {"title": get_plugin(model).title, "rows": rows, "notes": notes, "total": total,
            "source": f"bids_qc/models/cards/ledger/{model}.json"}


def render_section(model: str, folder: Path = LEDGER_DIR) -> str:
    """The ``## Training ledger`` section of one card (markdown, no markers)."""
    text = environment().get_template("ledger_section.md.j2").render(
        **section_context(model, folder))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def replace_section(text: str, body: str) -> str:
    """A card with its ledger section replaced (inserted after ``## Training`` if absent)."""
    return _replace(text, body, LEDGER_MARKERS, after_section("Training"))


def write_card(path: Path, text: str) -> None:
    """Write a regenerated card: the generated sections of the card it replaces are kept
    (:func:`~bids_qc.training.card_sections.keep_generated`), the ledger section rendered
    afresh from the ledger (a card regenerated after ``ledger add`` would otherwise carry the
    ledger as it stood before the sitting)."""
    path = Path(path)
    if path.is_file():
        text = keep_generated(path.read_text(encoding="utf-8"), text)
    if (LEDGER_DIR / f"{path.stem}.json").is_file():
        text = replace_section(text, render_section(path.stem))
    path.write_text(text, encoding="utf-8")


def render(folder: Path = LEDGER_DIR, cards_dir: Path = CARDS_DIR,
           check: bool = False) -> list[Path]:  # fmt: skip
    """Rewrite (or with ``check`` only find) every card whose ledger section is stale.

    Returns
    -------
    list of Path
        The cards that were (or, with ``check``, would be) rewritten.
    """
    stale = []
    for spec in REGISTRY:
        card = Path(cards_dir) / f"{spec.name}.md"
        if not card.is_file():
            continue
        old = card.read_text(encoding="utf-8")
        new = replace_section(old, render_section(spec.name, folder))
        if new != old:
            stale.append(card)
            if not check:
                card.write_text(new, encoding="utf-8")
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bids_qc.training.ledger",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", type=Path, default=LEDGER_DIR, help="the ledger folder")
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="append a finished sitting to a model's ledger")
    a.add_argument("model", choices=[s.name for s in REGISTRY])
    a.add_argument("sitting_dir", type=Path, help="the sitting's --out folder (sitting.json)")
    a.add_argument("--evaluation", type=Path, default=None,
                   help="a JSON file: an object of the figures measured on the real "
                        "calibration part")
    a.add_argument("--shipped", dest="shipped", action="store_true", default=None,
                   help="its weights shipped (default: whether their sha256 is the registry's)")
    a.add_argument("--not-shipped", dest="shipped", action="store_false")
    a.add_argument("--note", default="", help="a line shown under the card's table")
    r = sub.add_parser("render", help="write the cards' Training ledger sections")
    r.add_argument("--cards", type=Path, default=CARDS_DIR, help="the cards' folder")
    r.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when a card is out of date")
    n = sub.add_parser("next-step", help="print the next sitting's --start-step")
    n.add_argument("model", choices=[s.name for s in REGISTRY])
    ns = parser.parse_args(argv)
    if ns.cmd == "add":
        evaluation = (json.loads(ns.evaluation.read_text(encoding="utf-8"))
                      if ns.evaluation else None)  # fmt: skip
        try:
            entry = add(ns.model, ns.sitting_dir, evaluation, ns.shipped, ns.note, ns.ledger)
        except ValueError as exc:
            parser.error(str(exc))
        print(f"{ledger_path(ns.model, ns.ledger)}: added steps {entry['start_step']}-"
              f"{entry['end_step']} (shipped: {entry['shipped']}); now run "
              "`python -m bids_qc.training.ledger render`")
        return 0
    if ns.cmd == "next-step":
        print(next_step(ns.model, ns.ledger))
        return 0
    stale = render(ns.ledger, ns.cards, check=ns.check)
    for path in stale:
        print(f"{path}: {'out of date' if ns.check else 'rewritten'}")
    if ns.check and stale:
        print("run `python -m bids_qc.training.ledger render` to regenerate them",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
