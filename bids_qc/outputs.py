"""The output dataset: BIDS derivative files, result paths, and resume fingerprints."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .inputs import QCInput
from .io import atomic_write_json, atomic_write_text, md5sum
from .models.registry import ModelSpec

#: Where bids_qc lives (``GeneratedBy.CodeURL``, the README's pointer to the documentation).
HOMEPAGE = "https://example.org/bids_qc"

#: ``Authors`` of the output dataset unless a user put others in its description.
DEFAULT_AUTHORS = ("bids_qc developers",)

#: Marks the README / ``.bidsignore`` / validator configuration bids_qc wrote, so that a
#: rerun rewrites those and leaves a user's own (or one with this line deleted) alone.
MARKER = "Written by bids_qc; rewritten on every run (delete this line to keep your edits)."

#: The non-BIDS files of the output dataset (gitignore syntax, as BIDS validators read it):
#: reports, their figures, logs, the per-image result JSONs (sidecars without a data file:
#: BIDS has no QC-metrics file yet; MRIQC ignores its own the same way) and the group tables.
BIDSIGNORE = "\n".join([
    f"# {MARKER}",
    "# Files that are not BIDS files, so that BIDS validators skip them (see the bids_qc",
    "# documentation, Outputs): reports, figures, logs, per-image QC results, group tables.",
    "*.html",
    "figures/",
    "logs/",
    "sub-*/**/anat/*_T1w.json",
    "group_*.tsv",
    "ratings_*.tsv",
    "thresholds_*.json",
    "",
])

#: What earlier bids_qc versions wrote to ``.bidsignore`` (no marker): still ours to rewrite.
_LEGACY_BIDSIGNORES = (
    "*.html\nlogs/\nfigures/\ngroup_*.tsv\nratings_*.tsv\n",
    "*.html\nlogs/\nfigures/\ngroup_*.tsv\nratings_*.tsv\nthresholds_*.json\n",
)

#: The dataset configuration of the legacy (npm 1.x) ``bids-validator``, read from the
#: dataset root. That validator applies raw-data rules only: it rejects the
#: BIDS-Derivatives segmentations (``desc`` entity) and transforms (``xfm``) and, when
#: every file of the subject folders is a bidsignored QC result, reports "no subject
#: folders"; these stay visible, as warnings. The schema validator (2.x) reads
#: ``.bidsignore`` and not this file.
LEGACY_VALIDATOR_CONFIG: dict[str, Any] = {
    "_comment": f"{MARKER} Configuration of the legacy (1.x) bids-validator for a "
                "derivative dataset; see the bids_qc documentation, Outputs.",
    "warn": ["SUBJECT_FOLDERS", "NO_VALID_DATA_FOUND_FOR_SUBJECT"],
    "ignoredFiles": ["/sub-*/**/anat/*_dseg.nii.gz", "/sub-*/**/anat/*_xfm.txt"],
}

#: README names BIDS accepts; bids_qc writes the first when the dataset has none.
_README_NAMES = ("README.md", "README", "README.rst", "README.txt")


def container_info() -> dict[str, str] | None:
    """Container type and tag when running in the project's Docker/Singularity image."""
    kind = os.environ.get("BIDS_QC_CONTAINER_TYPE")
    if not kind:
        return None
    info = {"Type": kind}
    tag = os.environ.get("BIDS_QC_CONTAINER_TAG")
    if tag:
        info["Tag"] = tag
    return info


def _authors(output_dir: Path | None) -> list[str]:
    """``Authors`` a user put in an earlier ``dataset_description.json``, else the default."""
    if output_dir is not None:
        try:
            old = json.loads((Path(output_dir) / "dataset_description.json").read_text())
        except (OSError, ValueError):
            old = None
        authors = old.get("Authors") if isinstance(old, dict) else None
        if (isinstance(authors, list) and authors
                and all(isinstance(a, str) and a.strip() for a in authors)):
            return authors
    return list(DEFAULT_AUTHORS)


def dataset_description(bids_dir: Path, output_dir: Path | None = None) -> dict[str, Any]:
    """The ``dataset_description.json`` of the output derivative dataset.

    Parameters
    ----------
    bids_dir : Path
        The input BIDS dataset (``SourceDatasets``; its ``DatasetDOI`` when it has one).
    output_dir : Path, optional
        The output dataset: ``Authors`` edited into its existing description are kept.

    Returns
    -------
    dict
        The description, ``Authors`` and ``GeneratedBy`` (name, version, code URL,
        container) included.
    """
    generated: dict[str, Any] = {
        "Name": "bids_qc",
        "Version": __version__,
        "CodeURL": HOMEPAGE,
    }
    container = container_info()
    if container:
        generated["Container"] = container
    source: dict[str, str] = {"URL": Path(bids_dir).resolve().as_uri()}
    try:
        raw = json.loads((Path(bids_dir) / "dataset_description.json").read_text())
        if isinstance(raw, dict) and raw.get("DatasetDOI"):
            source["DOI"] = str(raw["DatasetDOI"])
    except (OSError, ValueError):
        pass  # the walker already decided whether the dataset is usable
    return {
        "Name": "bids_qc quality-control outputs",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "Authors": _authors(output_dir),
        "GeneratedBy": [generated],
        "SourceDatasets": [source],
    }


def readme_text(bids_dir: Path) -> str:
    """The output dataset's README (Markdown): what it is, which version, its layout."""
    source = Path(bids_dir).resolve().as_uri()
    return f"""# bids_qc quality-control outputs

<!-- {MARKER} -->

A BIDS-Derivatives dataset written by bids_qc {__version__} ({HOMEPAGE}): quality control
of the T1-weighted images of the BIDS dataset at {source}, with its segmentations and
registrations from fMRIPrep, FreeSurfer or FastSurfer derivatives.

## Layout

- `dataset_description.json`: this dataset (`GeneratedBy` with bids_qc's version,
  `SourceDatasets`, `Authors`)
- `sub-<label>/[ses-<label>/]anat/<bids_name>.json`: every metric of one T1w image, with
  its provenance and errors
- `sub-<label>/[ses-<label>/]anat/*_desc-<model>_dseg.nii.gz`: segmentations bids_qc made
  (FreeSurfer codes)
- `sub-<label>/[ses-<label>/]anat/*_from-T1w_to-<space>_mode-image_xfm.txt`: bids_qc's own
  affine registrations of T1w images without one from a derivative (ITK text affine)
- `<bids_name>.html`, `sub-<label>/figures/`: participant reports and their figures
- `group_T1w.tsv`, `group_T1w.html`: one row per image; the group report and review queue
- `group_T1w_flagged.tsv`, `group_T1w_queue.tsv`: flagged checks; the whole review queue
- `logs/`: the settings and timings of each run, crash files, the md5 cache

Every column and JSON key is described on the Outputs page of the bids_qc documentation
({HOMEPAGE}, `docs/outputs.md` in its source).

## Validation

`.bidsignore` lists the files that are not BIDS files (reports, figures, logs, the per-image
result JSONs, group tables), so BIDS validators skip them. `.bids-validator-config.json`
configures the legacy (1.x) `bids-validator`, which applies raw-data rules only: it skips the
naming check of the segmentations and transforms and reports the rules a derivative cannot
meet as warnings.

`Authors` in `dataset_description.json` defaults to the bids_qc developers: put the people
who ran and curated this dataset there before you share it (reruns keep what you edit in).
"""


def _ours(path: Path, legacy: tuple[str, ...] = ()) -> bool:
    """Whether ``path`` is absent or was written by bids_qc (its marker, or a legacy text)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError):
        return False  # unreadable: never overwrite what we cannot inspect
    return MARKER in text or text in legacy


def _write_if_ours(path: Path, text: str, legacy: tuple[str, ...] = ()) -> None:
    """Write ``text`` to ``path`` unless a file bids_qc did not write is already there."""
    if _ours(path, legacy):
        atomic_write_text(path, text)


def init_output_dir(output_dir: Path, bids_dir: Path) -> None:
    """Create the output dataset's fixed files (atomically; safe for concurrent jobs).

    ``dataset_description.json`` is always rewritten (``Authors`` a user edited in are
    kept); the README, ``.bidsignore`` and ``.bids-validator-config.json`` only when absent
    or written by bids_qc (:data:`MARKER`), so a user's own are left alone.

    Parameters
    ----------
    output_dir : Path
        OUTPUT_DIR; created with its ``logs/`` folder.
    bids_dir : Path
        The input BIDS dataset.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "logs").mkdir(exist_ok=True)
    atomic_write_json(output_dir / "dataset_description.json",
                      dataset_description(bids_dir, output_dir))
    readmes = [output_dir / n for n in _README_NAMES if (output_dir / n).exists()]
    for readme in readmes or [output_dir / _README_NAMES[0]]:
        _write_if_ours(readme, readme_text(bids_dir))
    _write_if_ours(output_dir / ".bidsignore", BIDSIGNORE, _LEGACY_BIDSIGNORES)
    _write_if_ours(output_dir / ".bids-validator-config.json",
                   json.dumps(LEGACY_VALIDATOR_CONFIG, indent=2) + "\n")


def result_path(output_dir: Path, row: QCInput) -> Path:
    """``sub-X/[ses-Y/]anat/<bids_name>.json`` under the output directory."""
    folder = Path(output_dir) / f"sub-{row.subject}"
    if row.session:
        folder = folder / f"ses-{row.session}"
    return folder / "anat" / f"{row.bids_name}.json"


def dseg_path(output_dir: Path, row: QCInput, desc: str) -> Path:
    """``sub-X/[ses-Y/]anat/<entities>_desc-<desc>_dseg.nii.gz`` beside the image's JSON.

    The ``_T1w`` suffix is dropped, as BIDS derivatives name a segmentation of a T1w
    (fMRIPrep's ``sub-X_desc-aseg_dseg``): ``dseg`` is the file's suffix.
    """
    stem = row.bids_name.removesuffix("_T1w")
    return result_path(output_dir, row).parent / f"{stem}_desc-{desc}_dseg.nii.gz"


def xfm_path(output_dir: Path, row: QCInput, space: str) -> Path:
    """``sub-X/[ses-Y/]anat/<entities>_from-T1w_to-<space>_mode-image_xfm.txt``.

    bids_qc's own affine from the T1w to the template, named as fMRIPrep names its
    transforms (the ``_T1w`` suffix dropped, as in :func:`dseg_path`).
    """
    stem = row.bids_name.removesuffix("_T1w")
    return result_path(output_dir, row).parent / f"{stem}_from-T1w_to-{space}_mode-image_xfm.txt"


#: The MD5 cache's file name, in the output dataset's ``logs/`` (ignored by BIDS tools).
MD5_CACHE = "md5_cache.json"


class Md5Cache:
    """MD5 of input files, reused while a file's size and modification time are unchanged.

    The rule (README, "existing results"): a file whose resolved path, size and mtime (ns)
    match the last run's is not read again; any change to one of them reads it again. A
    file rewritten in place with the same size and mtime is therefore missed, as by make
    and rsync's quick check; ``--force`` recomputes everything. Concurrent jobs (a SLURM
    array) each write the cache atomically; the last one wins, which only costs re-hashing.

    Parameters
    ----------
    path : Path or None
        The cache file (JSON); None keeps it in memory only.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        self.hashed = 0
        self._lock = threading.Lock()
        if path is not None:
            try:
                loaded = json.loads(Path(path).read_text())
                if isinstance(loaded, dict):
                    self.entries = loaded
            except (OSError, ValueError):
                pass

    def md5(self, path: str | Path) -> str:
        """The file's MD5, from the cache when its size and mtime are unchanged.

        Raises
        ------
        OSError, InputError
            As :func:`bids_qc.io.md5sum` (a missing file or a broken link).
        """
        key = str(Path(path).resolve())
        st = os.stat(path)
        hit = self.entries.get(key)
        if hit is not None and hit[:2] == [st.st_size, st.st_mtime_ns]:
            return str(hit[2])
        digest = md5sum(path)
        with self._lock:
            self.entries[key] = [st.st_size, st.st_mtime_ns, digest]
            self.hashed += 1
        return digest

    def save(self) -> None:
        """Write the cache (atomically), if it has a file."""
        if self.path is not None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                atomic_write_json(Path(self.path), dict(self.entries))


def fingerprints(rows: list[QCInput], models: tuple[ModelSpec, ...], options: dict[str, Any],
                 cache: Md5Cache | None = None, threads: int = 4) -> dict[str, dict[str, Any]]:
    """:func:`fingerprint` of every row, their files hashed by ``threads`` threads
    (hashlib releases the GIL on large reads)."""
    from concurrent.futures import ThreadPoolExecutor

    cache = cache or Md5Cache()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        prints = list(pool.map(lambda r: fingerprint(r, models, options, cache.md5), rows))
    return {r.bids_name: p for r, p in zip(rows, prints)}


def fingerprint(
    row: QCInput, models: tuple[ModelSpec, ...], options: dict[str, Any],
    md5: Callable[[str | Path], str] = md5sum,
) -> dict[str, Any]:
    """What a result depends on: input contents, versions, models, and output-relevant options.

    A rerun skips an image whose stored fingerprint equals the current one. Unreadable
    inputs (a broken annex link) get ``None`` so that the run itself reports them.
    """
    inputs: dict[str, str | None] = {}
    for role, path in row.input_files().items():
        try:
            inputs[role] = md5(path)
        except (OSError, ValueError):
            inputs[role] = None
    return {
        "bids_qc_version": __version__,
        "inputs": inputs,
        "models": {m.name: f"{m.version}:{m.sha256}" for m in models},
        "options": options,
    }


def is_up_to_date(path: Path, current: dict[str, Any]) -> bool:
    """Whether the stored result at ``path`` was computed from the same fingerprint, cleanly.

    An input that could not be read (``None``, e.g. an annexed raw T1w not fetched) was
    either needed, and then the stored result failed and is retried, or not needed, and
    then an equal fingerprint means nothing changed: recomputing it on every rerun would
    give the same result. Fetching the file changes its checksum and so the fingerprint.
    """
    try:
        stored = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(stored, dict) or stored.get("qc_error"):
        return False  # failed images are always retried
    provenance = stored.get("provenance")
    return isinstance(provenance, dict) and provenance.get("fingerprint") == current
