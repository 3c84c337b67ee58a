"""Find the T1w images of a BIDS dataset and their derivatives (the only pybids user).

:func:`collect_inputs` turns a dataset into :class:`~bids_qc.inputs.QCInput` rows, one
per T1w image; nothing downstream sees pybids. Raw images and fMRIPrep-family
derivatives are indexed with pybids (no validation, no sidecar metadata, only ``anat``
folders); FreeSurfer and FastSurfer folders are found by path
(:mod:`bids_qc.derivatives_fs`).

Pairing rules
-------------
A derivative pairs with a row when every identity entity it names (subject, session,
acquisition, ...) equals the row's, so fMRIPrep's run-less ``sub-01_desc-preproc_T1w``
pairs with every run of sub-01. Per source, the most specific match wins. A derivative
without a session pairs with a subject's session rows only when that source has
nothing session-specific for the subject (a FreeSurfer ``sub-01`` beside
``sub-01_ses-A`` is a longitudinal base, not an image of session B). A derivative that
pairs with no raw T1w names a row of its own (derivative-only datasets), except a
session-less one of a subject with sessions.

With ``--bids-database-dir``, the raw layout's pybids database is the folder itself
(as with fMRIPrep's option) and each fMRIPrep-family derivative gets
``derivatives/<folder>-<hash of its path>`` inside it. An existing database is loaded
without reindexing. Beside each, ``bids_qc_signature.json`` records the indexed folder
tree (:func:`tree_signature`); when the dataset has changed since, the job warns and
indexes in memory without touching the shared database: delete the folder and run one
job to index again. FreeSurfer/FastSurfer folders are not indexed and are always read
afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bids.layout import BIDSLayout, BIDSLayoutIndexer, Query
from bids.layout.models import Tag, type_map

from . import exitcodes
from .derivatives_fs import TALAIRACH_SPACE, FSSubject, find_subjects
from .errors import DatasetError
from .inputs import QCInput
from .io import atomic_write_json
from .settings import Settings

LOGGER = logging.getLogger("bids_qc.bids")
#: Written beside a pybids database: the :func:`tree_signature` of the indexed dataset.
SIGNATURE_FILE = "bids_qc_signature.json"
#: Paths per SQL query when reading entities in bulk (below SQLite's variable limit).
_SQL_CHUNK = 900

#: Entities that tell one T1w image from another (pybids names, BIDS file-name order).
IDENTITY = (
    "subject", "session", "acquisition", "ceagent", "reconstruction", "run", "echo", "part",
)
_PREFIX = dict(zip(IDENTITY, ("sub", "ses", "acq", "ce", "rec", "run", "echo", "part")))
_LONG = {short: long for long, short in _PREFIX.items()}
#: Entities whose labels are indices: fMRIPrep may write ``run-1`` for ``run-01``.
_INDEX_ENTITIES = frozenset({"run", "echo"})
NIFTI = (".nii", ".nii.gz")
#: The template bids_qc's checks are built on; preferred where fMRIPrep wrote several.
PREFERRED_SPACE = "MNI152NLin2009cAsym"
#: ``space-`` values that are not templates (native or surface spaces).
_NOT_TEMPLATES = frozenset({"T1w", "anat", "orig", "fsnative"})
#: GeneratedBy names / folder names of pipelines with fMRIPrep's anatomical outputs.
FMRIPREP_FAMILY = ("fmriprep", "smriprep", "nibabies")
#: Segmentation candidates in ``--seg-source auto`` order: key -> (source, kind).
SEG_PRECEDENCE = {
    "freesurfer": ("freesurfer", "aseg"),
    "fastsurfer": ("fastsurfer", "aseg"),
    "fmriprep": ("fmriprep", "aseg"),
    "fmriprep_tissue": ("fmriprep", "tissue"),
}
_XFM_KINDS = {".txt": "itk", ".mat": "itk", ".h5": "h5"}
_T1W_QUERY = {"suffix": "T1w", "datatype": "anat", "extension": list(NIFTI)}
#: Filter-file keys that would make the query return something other than T1w images.
_PROTECTED = ("suffix", "datatype", "extension", "scope", "return_type", "target")
#: Paths (relative to a layout root, with a leading ``/``) pybids never needs to walk:
#: only ``sub-*/[ses-*/]anat`` holds T1w images and fMRIPrep's anatomical outputs.
_IGNORE = [
    re.compile(r"^/(code|sourcedata|stimuli|models|derivatives|logs?)(/|$)"),
    re.compile(r"/\.(git|datalad)(/|$)"),  # pybids skips dot-folders too; kept explicit
    re.compile(r"^/sub-[^/]+/(?:ses-[^/]+/)?(?!anat(?:/|$)|ses-)[^/]+"),
]
_MAX_LISTED = 20


def normalise_labels(labels: Iterable[str], prefix: str) -> tuple[str, ...]:
    """Labels without their ``prefix-`` (``sub``/``ses``), deduplicated, in order.

    >>> normalise_labels(["sub-01", "01", " 02"], "sub")
    ('01', '02')
    """
    head = prefix.rstrip("-") + "-"
    out: list[str] = []
    for label in labels:
        label = str(label).strip()
        if label.startswith(head):
            label = label[len(head):]
        if label and label not in out:
            out.append(label)
    return tuple(out)


def bids_name(entities: Mapping[str, str]) -> str:
    """``sub-X[_ses-Y][_acq-Z][_ce-C][_rec-W][_run-N][_echo-E][_part-P]_T1w``."""
    parts = [f"{_PREFIX[k]}-{entities[k]}" for k in IDENTITY if entities.get(k) is not None]
    return "_".join(parts + ["T1w"])


def check_dataset(bids_dir: Path, skip_validation: bool) -> None:
    """Stop early when BIDS_DIR cannot be a BIDS dataset.

    Parameters
    ----------
    bids_dir : Path
        The dataset root.
    skip_validation : bool
        Only require the folder (``--skip-bids-validation``).

    Raises
    ------
    DatasetError
        Exit code 16 (``INVALID_BIDS``): the folder is missing or is a file, or
        ``dataset_description.json`` is missing or not a JSON object.
    """
    bids_dir = Path(bids_dir)
    code = exitcodes.INVALID_BIDS
    if not bids_dir.exists():
        raise DatasetError(f"BIDS_DIR {bids_dir} does not exist. Give the path of the "
                           "dataset's root folder (the one holding "
                           "dataset_description.json).", code)
    if not bids_dir.is_dir():
        raise DatasetError(f"BIDS_DIR {bids_dir} is a file, not a folder. Give the "
                           "dataset's root folder.", code)
    if skip_validation:
        return
    path = bids_dir / "dataset_description.json"
    skip = "or pass --skip-bids-validation"
    if path.is_symlink() and not path.exists():
        raise DatasetError(f"{path} is a dangling symlink (git-annex content not fetched). "
                           f"Run `datalad get {path}`, {skip}.", code)
    if not path.is_file():
        raise DatasetError(f"{path} is missing, so BIDS_DIR is not a BIDS dataset root. Point "
                           "BIDS_DIR at the root, add the file (with at least \"Name\" and "
                           f"\"BIDSVersion\"), {skip}.", code)
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"{path} is not valid JSON ({err}). Fix the file, {skip}.",
                           code) from err
    if not isinstance(description, dict):
        raise DatasetError(f"{path} does not hold a JSON object. Fix the file, {skip}.", code)


@dataclass
class _Bundle:
    """What one derivative offers for one set of identity entities."""

    source: str  # fmriprep / freesurfer / fastsurfer
    entities: dict[str, str]
    order: int  # discovery order, the tie-breaker between equally specific matches
    t1w_preproc: Path | None = None
    brain_mask: Path | None = None
    templates: list[tuple[tuple, str, Path]] = field(default_factory=list)  # key, space, path
    seg: dict[str, Path] = field(default_factory=dict)  # SEG_PRECEDENCE key -> path
    seg_reference: Path | None = None
    xfms: list[tuple[str, str, Path]] = field(default_factory=list)  # space, kind, path
    aseg_stats: Path | None = None  # FreeSurfer/FastSurfer stats/aseg.stats (eTIV)

    @property
    def is_anchor(self) -> bool:
        """Whether it holds an image that can name a row when no raw T1w pairs with it."""
        return bool(self.t1w_preproc or self.templates or self.seg)

    def xfm(self, space: str | None = None) -> tuple[str, str, Path] | None:
        """The best transform (to ``space`` if given): preferred template, then ITK.

        ITK text/.mat affines come before ``.h5`` composites, which need ANTs to read.
        """
        usable = [x for x in self.xfms if space is None or x[0] == space]
        return min(usable, default=None,
                   key=lambda x: (x[0] != PREFERRED_SPACE, x[1] != "itk", x[0], str(x[2])))


@dataclass
class _Row:
    entities: dict[str, str]
    t1w: Path | None = None

    @property
    def name(self) -> str:
        return bids_name(self.entities)


def collect_inputs(settings: Settings) -> list[QCInput]:
    """One :class:`QCInput` per selected T1w image, sorted by ``bids_name``.

    Parameters
    ----------
    settings : Settings
        Uses ``bids_dir``, ``participant_label``, ``session_label``, ``bids_filters``,
        ``derivatives``, ``seg_source`` and ``bids_database_dir``.

    Raises
    ------
    DatasetError
        16 when BIDS_DIR is not a folder; 66 when the dataset holds no T1w image (raw
        or derivative); 18 when the labels or filters select none (the message lists
        the labels that exist); 64 for a bad ``--bids-filter-file`` or a missing
        ``--derivatives`` folder.
    """
    bids_dir = Path(settings.bids_dir).expanduser().absolute()
    check_dataset(bids_dir, skip_validation=True)
    database = settings.bids_database_dir
    database = None if database is None else Path(database).expanduser().absolute()
    filters = _t1w_filters(settings.bids_filters)

    # BIDS_DIR may itself be an fMRIPrep output: then it has no raw images to index.
    description = _read_json(bids_dir / "dataset_description.json")
    if description is not None and not isinstance(description, dict):
        raise DatasetError(f"{bids_dir / 'dataset_description.json'} is JSON but not an "
                           "object, which pybids cannot read even with "
                           "--skip-bids-validation. Fix the file or remove it.",
                           exitcodes.INVALID_BIDS)
    root_is_derivative = (description or {}).get("DatasetType") == "derivative"
    # With --participant-label, pybids is asked for those subjects only (a job of an array
    # need not build 30,000 file objects to find its own); the whole listing is read only to
    # word an error (labels that select nothing).
    subjects = normalise_labels(settings.participant_label, "sub")
    try:
        return _collect(settings, bids_dir, database, filters, root_is_derivative, subjects)
    except DatasetError as err:
        if not subjects or err.exit_code not in (exitcodes.NOTHING_SELECTED,
                                                 exitcodes.NO_INPUT):
            raise
    return _collect(settings, bids_dir, database, filters, root_is_derivative, ())


def _collect(settings: Settings, bids_dir: Path, database: Path | None,
             filters: dict[str, Any], root_is_derivative: bool,
             subjects: tuple[str, ...]) -> list[QCInput]:
    """:func:`collect_inputs` with pybids asked for ``subjects`` only (all when empty)."""
    raw, selected = ([], set()) if root_is_derivative else _raw_images(bids_dir, database,
                                                                       filters, subjects)
    bundles = _find_derivatives(bids_dir, settings.derivatives, database, root_is_derivative,
                                subjects)
    rows = _rows(raw, bundles)
    if not rows:
        raise DatasetError(
            f"No T1w image in {bids_dir}: no sub-*/[ses-*/]anat/*_T1w.nii[.gz] and no "
            "fMRIPrep, FreeSurfer or FastSurfer derivative holding one. Check that BIDS_DIR "
            "is the dataset root (and --derivatives, if given).", exitcodes.NO_INPUT)
    chosen = _select(rows, settings, filters, selected)

    by_subject: dict[str, list[_Bundle]] = defaultdict(list)
    for bundle in bundles:
        by_subject[bundle.entities["subject"]].append(bundle)
    specific = _session_specific(bundles)
    listings: dict[str, list[str]] = {}
    out = []
    for row in chosen:
        picks: dict[str, _Bundle] = {}  # per source, the most specific (then first) match
        for bundle in by_subject.get(row.entities["subject"], []):
            best = picks.get(bundle.source)
            if _pairs(bundle, row.entities, specific) and (
                    best is None or len(bundle.entities) > len(best.entities)):
                picks[bundle.source] = bundle
        qc_input = _assemble(row, picks, settings.seg_source)
        if row.t1w is not None:
            qc_input = replace(qc_input, acquisition=_sidecar_fields(row.t1w, bids_dir,
                                                                     listings))
        out.append(qc_input)
    return sorted(out, key=lambda r: r.bids_name)


#: Sidecar fields that tell scanners apart: the group level's robust z-scores are computed
#: per acquisition group (see :mod:`bids_qc.robust_z`).
SIDECAR_FIELDS = ("Manufacturer", "MagneticFieldStrength")


def _sidecar_fields(t1w: Path, bids_dir: Path, listings: dict[str, list[str]]
                    ) -> dict[str, str | float]:
    """:data:`SIDECAR_FIELDS` of a raw T1w, by the BIDS inheritance principle.

    Every ``*T1w.json`` in the image's folder or a folder above it (up to ``bids_dir``)
    whose entities the image has applies; deeper and more specific files win. Read here,
    not through pybids (which does not index metadata, see :func:`_layout`), so that one
    sidecar that is not JSON costs its own fields only.

    Parameters
    ----------
    t1w : Path
        The raw image.
    bids_dir : Path
        The dataset root.
    listings : dict
        Folder -> its file names, shared between the images of one walk (the root and
        subject folders are listed once).
    """
    image = _name_entities(t1w.name)
    if image is None:
        return {}
    folders = []
    folder = t1w.parent
    while True:
        folders.append(folder)
        if folder == bids_dir or folder.parent == folder or bids_dir not in folder.parents:
            break
        folder = folder.parent
    found: dict[str, str | float] = {}
    for folder in reversed(folders):  # the root first: deeper files override
        key = str(folder)
        if key not in listings:
            try:
                listings[key] = sorted(n for n in os.listdir(folder) if n.endswith("T1w.json"))
            except OSError:
                listings[key] = []
        applicable = []
        for name in listings[key]:
            entities = _name_entities(name)
            if entities is not None and entities.get("suffix") == "T1w" and all(
                    k in image and _equal(k, v, image[k])
                    for k, v in entities.items() if k != "suffix"):
                applicable.append((len(entities), name))
        for _, name in sorted(applicable):
            data = _read_json(folder / name)
            if not isinstance(data, dict):
                LOGGER.debug("sidecar %s is not a JSON object; ignored", folder / name)
                continue
            for field_name in SIDECAR_FIELDS:
                value = data.get(field_name)
                if isinstance(value, str) or (isinstance(value, (int, float))
                                              and not isinstance(value, bool)):
                    found[field_name] = value
    return found


def _name_entities(name: str) -> dict[str, str] | None:
    """Entities (and ``suffix``) of a BIDS file name with or without ``sub-``."""
    stem = name[: len(name) - len(_extension(name))]
    *pairs, suffix = stem.split("_")
    entities = {"suffix": suffix}
    for pair in pairs:
        key, sep, value = pair.partition("-")
        if not sep or not value:
            return None
        entities[_LONG.get(key, key)] = value
    return entities


# --- raw images ------------------------------------------------------------------------

def _layout(root: Path, database: Path | None, derivative: bool) -> BIDSLayout:
    """A pybids layout of ``root``, loaded from ``database`` when that already holds one.

    A database whose dataset changed since it was indexed (:func:`tree_signature`) is not
    used, and not rewritten either (the jobs of an array share it): this job indexes in
    memory and a warning says to delete the folder.
    """
    # Sidecar metadata is never needed, and pybids stops at the first sidecar that is
    # not valid JSON, so it is not indexed at all.
    indexer = BIDSLayoutIndexer(validate=False, ignore=_IGNORE, index_metadata=False)
    kwargs: dict[str, Any] = {"validate": False, "is_derivative": derivative,
                              "indexer": indexer}
    if database is None:
        return BIDSLayout(root, **kwargs)
    database.mkdir(parents=True, exist_ok=True)
    signature = tree_signature(root)
    stored = _read_json(database / SIGNATURE_FILE)
    if not (database / "layout_index.sqlite").is_file():
        layout = BIDSLayout(root, database_path=database, **kwargs)
        atomic_write_json(database / SIGNATURE_FILE, signature)
        return layout
    if stored is not None and stored != signature:
        LOGGER.warning("The pybids database in %s is out of date: %s changed since it was "
                       "indexed. This job indexes without it; delete %s (or give a new "
                       "--bids-database-dir) and run one job to index again.",
                       database, root, database)
        return BIDSLayout(root, **kwargs)
    layout = BIDSLayout(root, database_path=database, **kwargs)
    if Path(layout.root) == root:
        return layout
    # pybids takes the root from a stored database: a database of another dataset
    # would silently answer for it.
    LOGGER.warning("The pybids database in %s indexes %s, not %s: reindexing.",
                   database, layout.root, root)
    layout = BIDSLayout(root, database_path=database, reset_database=True, **kwargs)
    atomic_write_json(database / SIGNATURE_FILE, signature)
    return layout


def tree_signature(root: Path) -> dict[str, Any]:
    """What a pybids index of ``root`` depends on: its ``sub-*`` folders and their times.

    The names of the ``sub-*`` folders, and the modification time of every folder down to
    ``sub-*/ses-*/anat`` (a file added, removed or renamed changes its folder's time;
    a file rewritten in place does not change its name, so not the index either). About
    three ``stat`` calls per subject: a fraction of a second at 5,000 subjects.
    """
    times: list[list[Any]] = []

    def walk(folder: str, rel: str, depth: int) -> None:
        try:
            with os.scandir(folder) as entries:
                subdirs = sorted((e.name, e.path) for e in entries
                                 if e.is_dir() and (depth or e.name.startswith("sub-")))
        except OSError:
            return
        for name, path in subdirs:
            child = f"{rel}/{name}" if rel else name
            try:
                times.append([child, os.stat(path).st_mtime_ns])
            except OSError:
                continue
            if depth < 2:
                walk(path, child, depth + 1)

    walk(str(root), "", 0)
    digest = hashlib.sha256(json.dumps(times).encode()).hexdigest()
    return {"root": str(root), "folders": len(times), "sha256": digest}


def _tag_value(raw: str, dtype: str) -> Any:
    """A tag's value as pybids' ``Tag`` gives it (``_init_on_load``)."""
    if dtype == "json":
        return json.loads(raw)
    if dtype == "bool":
        return raw == "True"
    return type_map[dtype](raw)


def _entities(layout: BIDSLayout, files: list[Any]) -> list[dict[str, Any]]:
    """``f.get_entities()`` of every file, read in a few SQL queries.

    ``get_entities`` runs one query per file, and ``Tag`` objects cost as much again: a
    minute at 5,000 subjects, where these bulk reads of the ``tags`` columns take a second.
    """
    paths = [f.path for f in files]
    found: dict[str, dict[str, Any]] = {p: {} for p in paths}
    try:
        columns = (Tag.file_path, Tag.entity_name, Tag._value, Tag._dtype)
        for start in range(0, len(paths), _SQL_CHUNK):
            query = layout.session.query(*columns).filter(
                Tag.file_path.in_(paths[start:start + _SQL_CHUNK]),
                Tag.is_metadata.is_(False))
            for path, name, raw, dtype in query:
                found[path][name] = _tag_value(raw, dtype)
    except Exception as err:  # another pybids layout of its tables: ask file by file
        LOGGER.debug("bulk entity query failed (%s); reading entities per file", err)
        return [f.get_entities() for f in files]
    return [found[p] for p in paths]


def _raw_images(bids_dir: Path, database: Path | None, filters: dict[str, Any],
                subjects: tuple[str, ...] = ()) -> tuple[list[_Row], set[str]]:
    """Every raw T1w image (of ``subjects``, when given) as a row, and the paths the filter
    file selects."""
    try:
        layout = _layout(bids_dir, database, derivative=False)
        files = layout.get(return_type="object", scope="self", **_T1W_QUERY,
                           **_subject_query(subjects))
    except Exception as err:  # pybids raises many types; all mean "cannot index"
        raise DatasetError(f"pybids could not index {bids_dir}: {err}. Check the dataset "
                           "(e.g. with the BIDS validator).", exitcodes.INVALID_BIDS) from err
    rows: dict[str, _Row] = {}
    files = sorted(files, key=lambda f: f.path)
    for bids_file, entities in zip(files, _entities(layout, files), strict=True):
        row = _Row(_identity(entities), Path(bids_file.path))
        if row.name in rows:  # .nii beside .nii.gz, or an entity bids_qc does not track
            LOGGER.warning("%s and %s are both %s; using the first.",
                           rows[row.name].t1w, row.t1w, row.name)
            continue
        rows[row.name] = row
    if not filters:
        return list(rows.values()), {str(r.t1w) for r in rows.values()}
    try:
        selected = layout.get(return_type="filename", scope="self", **filters, **_T1W_QUERY)
    except ValueError as err:
        raise DatasetError(f"--bids-filter-file: {err}", exitcodes.USAGE) from err
    return list(rows.values()), set(selected)


def _t1w_filters(bids_filters: Mapping[str, Any] | None) -> dict[str, Any]:
    """The pybids query of the filter file's ``t1w`` (or ``T1w``) entry."""
    if not bids_filters:
        return {}
    if not isinstance(bids_filters, Mapping):
        raise DatasetError("--bids-filter-file must hold a JSON object such as "
                           '{"t1w": {"acquisition": "mprage"}}.', exitcodes.USAGE)
    merged: dict[str, Any] = {}
    for key in ("T1w", "t1w"):  # other keys (bold, dwi, ...) belong to other apps
        entry = bids_filters.get(key)
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            raise DatasetError(f'--bids-filter-file: "{key}" must map entity names to '
                               f"values, not {entry!r}.", exitcodes.USAGE)
        merged.update(entry)
    out = {}
    for name, value in merged.items():
        if name in _PROTECTED:
            LOGGER.warning('--bids-filter-file: "%s" ignored (bids_qc reads anat T1w '
                           "NIfTI images only).", name)
            continue
        out[_LONG.get(name, name)] = _query_value(value)
    return out


def _query_value(value: Any) -> Any:
    """JSON filter value -> pybids query value (``null``: absent, ``"*"``: present)."""
    if isinstance(value, list):
        return [_query_value(v) for v in value]
    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    return value


def _passes(entities: Mapping[str, str], filters: Mapping[str, Any]) -> bool:
    """The filter file applied to a derivative-only row (identity entities only)."""
    for name, wanted in filters.items():
        if name not in IDENTITY:
            continue
        value = entities.get(name)
        options = wanted if isinstance(wanted, list) else [wanted]
        if not any(_accepts(name, option, value) for option in options):
            return False
    return True


def _accepts(name: str, option: Any, value: str | None) -> bool:
    if option is Query.NONE:
        return value is None
    if option is Query.ANY:
        return value is not None
    if option is Query.OPTIONAL:
        return True
    return value is not None and _equal(name, str(option), value)


def _equal(name: str, a: str, b: str) -> bool:
    """Entity values equal; ``run-1`` is ``run-01`` (index entities), ``sub-1`` is not."""
    if a == b:
        return True
    return name in _INDEX_ENTITIES and a.isdigit() and b.isdigit() and int(a) == int(b)


def _identity(entities: Mapping[str, Any]) -> dict[str, str]:
    # str() keeps a run's zero padding (pybids' PaddedInt)
    return {k: str(entities[k]) for k in IDENTITY if entities.get(k) is not None}


# --- derivatives -----------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _is_fmriprep_family(root: Path) -> bool:
    """Whether a derivative dataset's GeneratedBy name or folder name is fMRIPrep's family."""
    description = _read_json(root / "dataset_description.json")
    description = description if isinstance(description, dict) else {}
    names = [root.name]
    generated = description.get("GeneratedBy")
    if isinstance(generated, list) and generated and isinstance(generated[0], dict):
        names.append(str(generated[0].get("Name", "")))
    legacy = description.get("PipelineDescription")  # BIDS < 1.4 (fMRIPrep < 20.2)
    if isinstance(legacy, dict):
        names.append(str(legacy.get("Name", "")))
    return any(tool in name.lower() for name in names for tool in FMRIPREP_FAMILY)


def _subject_query(subjects: tuple[str, ...]) -> dict[str, Any]:
    return {"subject": list(subjects)} if subjects else {}


def _find_derivatives(bids_dir: Path, given: Iterable[Path] | None, database: Path | None,
                      root_is_derivative: bool, subjects: tuple[str, ...] = ()
                      ) -> list[_Bundle]:
    """Every derivative bundle, in discovery order."""
    roots: list[tuple[Path, bool]] = []  # (folder, named by the user)
    if root_is_derivative:
        roots.append((bids_dir, True))
    if given is None:
        base = bids_dir / "derivatives"
        if base.is_dir():
            roots += [(d, False) for d in sorted(base.iterdir())
                      if d.is_dir() and not d.name.startswith(".")]
    else:
        for path in given:
            path = Path(path).expanduser().absolute()
            if not path.is_dir():
                raise DatasetError(f"--derivatives {path}: no such folder. Give folders "
                                   "of fMRIPrep, FreeSurfer or FastSurfer outputs.",
                                   exitcodes.USAGE)
            roots.append((path, True))
    bundles: list[_Bundle] = []
    seen: set[Path] = set()
    for root, explicit in roots:
        if root not in seen:  # the same folder twice would pair twice
            seen.add(root)
            _scan(root, explicit, database, bundles, subjects)
    return bundles


def _scan(root: Path, explicit: bool, database: Path | None, bundles: list[_Bundle],
          subjects: tuple[str, ...] = ()) -> None:
    """Add the bundles of one derivative folder.

    FreeSurfer/FastSurfer subject folders are used wherever they are found. A folder
    with a ``dataset_description.json`` or ``sub-*/anat`` folders is read as fMRIPrep
    output when the user named it, or when fMRIPrep's family wrote it (MRIQC's or
    another pipeline's outputs are not). A named folder holding neither is scanned as a
    ``derivatives/`` folder.
    """
    before = len(bundles)
    bundles.extend(_fs_bundle(s, before + i) for i, s in enumerate(find_subjects(root)))
    fmriprep_like = ((root / "dataset_description.json").exists()
                     or any(root.glob("sub-*/anat")) or any(root.glob("sub-*/ses-*/anat")))
    if fmriprep_like and (explicit or _is_fmriprep_family(root)):
        bundles.extend(_fmriprep_bundles(root, database, len(bundles), subjects))
    elif fmriprep_like and len(bundles) == before:
        LOGGER.info("%s is not an fMRIPrep/sMRIPrep output; not used (name it with "
                    "--derivatives to use it).", root)
    elif explicit and len(bundles) == before:
        for child in sorted(root.iterdir()):
            if child.is_dir() and not child.name.startswith("."):
                _scan(child, False, database, bundles, subjects)


def _fs_bundle(subject: FSSubject, order: int) -> _Bundle:
    bundle = _Bundle(subject.source, subject.entities, order,
                     t1w_preproc=subject.t1w_preproc, seg_reference=subject.seg_reference,
                     aseg_stats=subject.aseg_stats)
    if subject.seg is not None:
        bundle.seg[subject.source] = subject.seg
    if subject.xfm is not None:
        bundle.xfms.append((TALAIRACH_SPACE, "talairach", subject.xfm))
    return bundle


def _fmriprep_bundles(root: Path, database: Path | None, order: int,
                      subjects: tuple[str, ...] = ()) -> list[_Bundle]:
    """fMRIPrep's anatomical outputs, grouped by identity entities."""
    groups: dict[tuple, _Bundle] = {}
    for entities, path in _fmriprep_files(root, database, subjects):
        identity = _identity(entities)
        if "subject" not in identity:
            continue
        key = tuple(identity.items())
        if key not in groups:
            groups[key] = _Bundle("fmriprep", identity, order + len(groups))
        _classify(groups[key], entities, path)
    return [b for b in groups.values() if b.is_anchor or b.brain_mask or b.xfms]


def _fmriprep_files(root: Path, database: Path | None, subjects: tuple[str, ...] = ()
                    ) -> list[tuple[dict[str, Any], Path]]:
    """(entities, path) of the files in ``anat`` folders; pybids, else file-name parsing."""
    db = None
    if database is not None:  # one database per derivative folder, named after its path
        digest = hashlib.sha1(str(root).encode()).hexdigest()[:8]
        db = database / "derivatives" / f"{root.name}-{digest}"
    try:
        layout = _layout(root, db, derivative=True)
        files = layout.get(return_type="object", scope="self", datatype="anat",
                           suffix=["T1w", "mask", "dseg", "xfm"], **_subject_query(subjects))
        return list(zip(_entities(layout, files), [Path(f.path) for f in files], strict=True))
    except Exception as err:  # e.g. dataset_description.json that is not JSON
        LOGGER.warning("pybids could not index %s (%s); reading its file names instead.",
                       root, err)
    out = []
    for path in sorted([*root.glob("sub-*/anat/*"), *root.glob("sub-*/ses-*/anat/*")]):
        entities = _parse_name(path.name)
        if entities is not None:
            out.append((entities, path))
    return out


def _parse_name(name: str) -> dict[str, str] | None:
    """Entities of a BIDS file name (pybids names), or None if it is not one."""
    entities = _name_entities(name)
    return entities if entities is not None and "subject" in entities else None


def _extension(name: str) -> str:
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def _classify(bundle: _Bundle, entities: Mapping[str, Any], path: Path) -> None:
    """File one fMRIPrep output by its entities (never by its contents)."""
    ext = _extension(path.name)
    suffix, desc, space = entities.get("suffix"), entities.get("desc"), entities.get("space")
    space = None if space is None else str(space)
    native = space in (None, "T1w")
    image = ext in NIFTI
    if suffix == "T1w" and image and desc == "preproc":
        if native:
            bundle.t1w_preproc = bundle.t1w_preproc or path
        elif space not in _NOT_TEMPLATES:
            bundle.templates.append(((space != PREFERRED_SPACE, space, _res_key(entities)),
                                     space, path))
    elif suffix == "mask" and image and desc == "brain" and native:
        bundle.brain_mask = bundle.brain_mask or path
    elif suffix == "dseg" and image and native and desc in ("aseg", None):
        # desc-aseg_dseg: FreeSurfer codes; a bare dseg: fMRIPrep's CSF/GM/WM classes
        bundle.seg.setdefault("fmriprep" if desc == "aseg" else "fmriprep_tissue", path)
    elif (suffix == "xfm" and ext in _XFM_KINDS and str(entities.get("from")) == "T1w"
          and str(entities.get("mode", "image")) == "image"
          and str(entities.get("to")) not in _NOT_TEMPLATES):
        bundle.xfms.append((str(entities["to"]), _XFM_KINDS[ext], path))


def _res_key(entities: Mapping[str, Any]) -> tuple:
    """No ``res-`` first, then the finest (lowest) numbered resolution."""
    res = entities.get("res")
    if res is None:
        return (0, 0, "")
    res = str(res)
    return (1, int(res), "") if res.isdigit() else (2, 0, res)


# --- rows ------------------------------------------------------------------------------

def _session_specific(bundles: list[_Bundle]) -> set[tuple[str, str]]:
    """(source, subject) pairs for which the source has session-specific outputs."""
    return {(b.source, b.entities["subject"]) for b in bundles if "session" in b.entities}


def _pairs(bundle: _Bundle, entities: Mapping[str, str], specific: set[tuple[str, str]]) -> bool:
    """Whether a derivative bundle pairs with a row (see the module's pairing rules)."""
    for name, value in bundle.entities.items():
        if name not in entities or not _equal(name, value, entities[name]):
            return False
    return not ("session" in entities and "session" not in bundle.entities
                and (bundle.source, bundle.entities["subject"]) in specific)


def _rows(raw: list[_Row], bundles: list[_Bundle]) -> list[_Row]:
    """Raw rows plus a row for each derivative that pairs with no row."""
    rows = {row.name: row for row in raw}
    by_subject: dict[str, list[_Row]] = defaultdict(list)
    for row in raw:
        by_subject[row.entities["subject"]].append(row)
    specific = _session_specific(bundles)
    # Most specific first, so that a less specific derivative joins their rows.
    anchors = sorted((b for b in bundles if b.is_anchor),
                     key=lambda b: (-len(b.entities), b.order))
    for bundle in anchors:
        subject_rows = by_subject[bundle.entities["subject"]]
        if any(_pairs(bundle, row.entities, specific) for row in subject_rows):
            continue
        if "session" not in bundle.entities and any("session" in r.entities
                                                    for r in subject_rows):
            LOGGER.info("%s derivative of sub-%s has no session while the subject has "
                        "sessions (a longitudinal base?): not used.", bundle.source,
                        bundle.entities["subject"])
            continue
        row = _Row(dict(bundle.entities))
        rows[row.name] = row
        subject_rows.append(row)
    return list(rows.values())


def _select(rows: list[_Row], settings: Settings, filters: dict[str, Any],
            selected: set[str]) -> list[_Row]:
    """The rows the labels and the filter file select; DatasetError 18 if none."""
    subjects = normalise_labels(settings.participant_label, "sub")
    sessions = normalise_labels(settings.session_label, "ses")
    labelled = [r for r in rows
                if (not subjects or r.entities["subject"] in subjects)
                and (not sessions or r.entities.get("session") in sessions)]
    if not labelled:
        asked = " ".join(filter(None, [
            subjects and "--participant-label " + " ".join(subjects),
            sessions and "--session-label " + " ".join(sessions)]))
        raise DatasetError(f"{asked} selected no T1w image. Subjects with a T1w image: "
                           f"{_listing(rows, 'subject')}; sessions: "
                           f"{_listing(rows, 'session')}. Give labels from these lists "
                           "(with or without sub-/ses-).", exitcodes.NOTHING_SELECTED)
    missing = [s for s in subjects if s not in {r.entities["subject"] for r in rows}]
    if missing:
        LOGGER.warning("--participant-label: no T1w image for %s.", ", ".join(missing))
    if not filters:
        return labelled
    chosen = [r for r in labelled
              if (str(r.t1w) in selected if r.t1w is not None else _passes(r.entities, filters))]
    if not chosen:
        values = "; ".join(f"{name}: {_listing(labelled, name)}"
                           for name in filters if name in IDENTITY)
        given = json.dumps(settings.bids_filters, default=str)
        raise DatasetError(f"--bids-filter-file ({given}) "
                           f"selected none of the {len(labelled)} T1w images the labels "
                           f"select. Values there: {values or 'see the file names'}.",
                           exitcodes.NOTHING_SELECTED)
    return chosen


def _listing(rows: list[_Row], name: str) -> str:
    values = sorted({r.entities[name] for r in rows if name in r.entities})
    if not values:
        return "none"
    more = f" ... ({len(values)} in all)" if len(values) > _MAX_LISTED else ""
    return ", ".join(values[:_MAX_LISTED]) + more


def _assemble(row: _Row, picks: dict[str, _Bundle], seg_choice: str) -> QCInput:
    """Apply the segmentation and registration precedence to one row's derivatives."""
    fp, fs, fast = picks.get("fmriprep"), picks.get("freesurfer"), picks.get("fastsurfer")
    sources = {"t1w": "raw"} if row.t1w is not None else {}
    fields: dict[str, Any] = {}

    owners = {key: b for b in (fs, fast, fp) if b is not None for key in b.seg}
    candidates = {key: str(owners[key].seg[key]) for key in SEG_PRECEDENCE if key in owners}
    order = [k for k, (src, _) in SEG_PRECEDENCE.items() if seg_choice in ("auto", src)]
    seg_key = next((k for k in order if k in owners), None)
    if seg_key is not None:
        owner = owners[seg_key]
        source, kind = SEG_PRECEDENCE[seg_key]
        fields.update(seg=owner.seg[seg_key], seg_kind=kind, seg_source=source)
        reference = owner.t1w_preproc if owner is fp else owner.seg_reference
        sources["seg"] = source
        if reference is not None:
            fields["seg_reference"] = reference
            sources["seg_reference"] = source

    # Registration: fMRIPrep's template-space T1w, else FreeSurfer/FastSurfer and
    # talairach.xfm, else an fMRIPrep transform of the native image.
    preproc_owner = None
    if fp is not None and fp.templates:
        _, space, path = min(fp.templates, key=lambda t: (t[0], str(t[2])))
        fields.update(template_t1w=path, template_space=space, reg_source="fmriprep")
        sources["template_t1w"] = "fmriprep"
        xfm = fp.xfm(space)
    else:
        fs_like = next((b for b in (fs, fast) if b is not None and b.t1w_preproc and b.xfms),
                       None)
        if fs_like is not None:
            preproc_owner, xfm = fs_like, fs_like.xfm()
        elif fp is not None and (row.t1w is not None or fp.t1w_preproc) and fp.xfms:
            xfm = fp.xfm()
        else:
            xfm = None
        if xfm is not None:
            fields.update(template_space=xfm[0],
                          reg_source=fs_like.source if fs_like else "fmriprep")
    if xfm is not None:
        fields.update(xfm=xfm[2], xfm_kind=xfm[1])
        sources["xfm"] = fields["reg_source"]

    # The preprocessed T1w follows a FreeSurfer-side registration (its xfm maps that
    # volume); otherwise fMRIPrep's, then FreeSurfer's, then FastSurfer's.
    if preproc_owner is None:
        preproc_owner = next((b for b in (fp, fs, fast) if b is not None and b.t1w_preproc),
                             None)
    if preproc_owner is not None:
        fields["t1w_preproc"] = preproc_owner.t1w_preproc
        sources["t1w_preproc"] = preproc_owner.source
    if fp is not None and fp.brain_mask is not None:
        fields["brain_mask"] = fp.brain_mask
        sources["brain_mask"] = "fmriprep"
    # eTIV (the volumes' scale at group level): FreeSurfer's, else FastSurfer's stats.
    stats_owner = next((b for b in (fs, fast) if b is not None and b.aseg_stats), None)
    if stats_owner is not None:
        fields["aseg_stats"] = stats_owner.aseg_stats
        sources["aseg_stats"] = stats_owner.source
    return QCInput(bids_name=row.name, entities=dict(row.entities), t1w=row.t1w,
                   sources=sources, candidates=candidates, **fields)


__all__ = ["IDENTITY", "bids_name", "check_dataset", "collect_inputs", "normalise_labels"]
