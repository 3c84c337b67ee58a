"""Generated sections of the model cards: splicing them in, and keeping them on regeneration.

A card (``bids_qc/models/cards/<model>.md``) is written by its model's card script
(``*_card.py``) from an evaluation run, but two of its sections come from elsewhere, each
between its own markers:

- ``## Real data`` (:mod:`bids_qc.training.realdata_card`), between
  :data:`REALDATA_MARKERS`, before the card's first ``##`` section;
- ``## Training ledger`` (:mod:`bids_qc.training.ledger`), between :data:`LEDGER_MARKERS`,
  after the card's ``## Training`` section.

:func:`replace_section` writes one of them and keeps the rest of the card byte for byte;
:func:`keep_generated` carries them over to a regenerated card
(:func:`bids_qc.training.ledger.write_card`, which also renders the ledger afresh).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jinja2

#: Markers around the generated "Real data" and "Training ledger" sections of a card.
REALDATA_MARKERS = ("<!-- realdata:start -->", "<!-- realdata:end -->")
LEDGER_MARKERS = ("<!-- ledger:start -->", "<!-- ledger:end -->")

#: Where a section goes when a card lacks its markers: text -> offset.
Placement = Callable[[str], int]


def environment() -> jinja2.Environment:
    """The templates of the generated markdown (``bids_qc/training/templates``)."""
    # Markdown, not HTML: no autoescape (the report templates' environment escapes).
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
        undefined=jinja2.StrictUndefined)


def _headings(text: str) -> list[tuple[int, str]]:
    """Offsets and lines of the ``## `` headings outside code fences."""
    out, offset, fenced = [], 0, False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            out.append((offset, line.rstrip("\n")))
        offset += len(line)
    return out


def first_section(text: str) -> int:
    """Offset of the first ``## `` heading outside code fences (end of text if none)."""
    heads = _headings(text)
    return heads[0][0] if heads else len(text)


def after_section(title: str, fallback: str = "Licences") -> Placement:
    """A placement: the end of the ``## <title>`` section (at the next ``##`` heading).

    Without that section: before ``## <fallback>``, else at the end of the text.
    """

    def place(text: str) -> int:
        heads = _headings(text)
        names = [line[3:].strip() for _, line in heads]
        if title in names:
            k = names.index(title)
            return heads[k + 1][0] if k + 1 < len(heads) else len(text)
        if fallback in names:
            return heads[names.index(fallback)][0]
        return len(text)

    return place


def replace_section(text: str, body: str, markers: tuple[str, str] = REALDATA_MARKERS,
                    place: Placement = first_section) -> str:  # fmt: skip
    """``text`` with ``body`` between ``markers``; everything outside them kept byte for byte.

    Without the markers, the marked body goes where ``place`` says (by default before the
    first ``##`` section, after a card's title and intro), or at the end of the text.

    Raises
    ------
    ValueError
        If only one marker is present, or the end marker comes first.
    """
    start, end = markers
    i, j = text.find(start), text.find(end)
    block = f"{start}\n{body.strip(chr(10))}\n{end}"
    if i < 0 and j < 0:
        at = place(text)
        head = text[:at]
        if at == len(text):
            return head.rstrip("\n") + "\n\n" + block + "\n"
        return head + block + "\n\n" + text[at:]
    if i < 0 or j < i:
        raise ValueError(f"unbalanced markers {start} ... {end}")
    return text[:i] + block + text[j + len(end):]


def section_body(text: str, markers: tuple[str, str]) -> str | None:
    """What ``text`` holds between ``markers`` (None without them)."""
    i, j = text.find(markers[0]), text.find(markers[1])
    if i < 0 or j < i:
        return None
    return text[i + len(markers[0]):j].strip("\n") + "\n"


#: The generated sections a regenerated card keeps, with where each goes.
GENERATED: tuple[tuple[tuple[str, str], Placement], ...] = (
    (REALDATA_MARKERS, first_section),
    (LEDGER_MARKERS, after_section("Training")),
)


def keep_generated(old: str, new: str) -> str:
    """``new`` (a card script's output) with the generated sections of ``old`` it lacks."""
    for markers, place in GENERATED:
        body = section_body(old, markers)
        if body is not None and markers[0] not in new:
            new = replace_section(new, body, markers, place)
    return new
