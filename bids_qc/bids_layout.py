"""The pybids adapter: the only module that imports pybids.

Raw T1w images and fMRIPrep-family derivatives are indexed with pybids (no validation, no
sidecar metadata, only ``anat`` folders), optionally in a shared database (see
:mod:`bids_qc.bids` for ``--bids-database-dir``); the filter file becomes a pybids query.
What pybids gives back leaves this module as plain dicts, paths and :class:`Row` objects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bids.layout import BIDSLayout, BIDSLayoutIndexer, Query
from bids.layout.models import Tag, type_map

from . import exitcodes
from .bids_names import (
    IDENTITY,
    LONG_ENTITIES,
    NIFTI,
    Row,
    equal_entity,
    identity,
    parse_name,
    read_json,
)
from .errors import DatasetError
from .io import atomic_write_json

LOGGER = logging.getLogger("bids_qc.bids")
#: Written beside a pybids database: the :func:`tree_signature` of the indexed dataset.
SIGNATURE_FILE = "bids_qc_signature.json"
#: Paths per SQL query when reading entities in bulk (below SQLite's variable limit).
_SQL_CHUNK = 900
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


def open_layout(root: Path, database: Path | None, derivative: bool) -> BIDSLayout:
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
    stored = read_json(database / SIGNATURE_FILE)
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


def file_entities(layout: BIDSLayout, files: list[Any]) -> list[dict[str, Any]]:
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


def subject_query(subjects: tuple[str, ...]) -> dict[str, Any]:
    return {"subject": list(subjects)} if subjects else {}


def raw_images(bids_dir: Path, database: Path | None, filters: dict[str, Any],
                subjects: tuple[str, ...] = ()) -> tuple[list[Row], set[str]]:
    """Every raw T1w image (of ``subjects``, when given) as a row, and the paths the filter
    file selects."""
    try:
        layout = open_layout(bids_dir, database, derivative=False)
        files = layout.get(return_type="object", scope="self", **_T1W_QUERY,
                           **subject_query(subjects))
    except Exception as err:  # pybids raises many types; all mean "cannot index"
        raise DatasetError(f"pybids could not index {bids_dir}: {err}. Check the dataset "
                           "(e.g. with the BIDS validator).", exitcodes.INVALID_BIDS) from err
    rows: dict[str, Row] = {}
    files = sorted(files, key=lambda f: f.path)
    for bids_file, entities in zip(files, file_entities(layout, files), strict=True):
        row = Row(identity(entities), Path(bids_file.path))
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


def t1w_filters(bids_filters: Mapping[str, Any] | None) -> dict[str, Any]:
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
        out[LONG_ENTITIES.get(name, name)] = _query_value(value)
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


def passes_filters(entities: Mapping[str, str], filters: Mapping[str, Any]) -> bool:
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
    return value is not None and equal_entity(name, str(option), value)


def fmriprep_files(root: Path, database: Path | None, subjects: tuple[str, ...] = ()
                    ) -> list[tuple[dict[str, Any], Path]]:
    """(entities, path) of the files in ``anat`` folders; pybids, else file-name parsing."""
    db = None
    if database is not None:  # one database per derivative folder, named after its path
        digest = hashlib.sha1(str(root).encode()).hexdigest()[:8]
        db = database / "derivatives" / f"{root.name}-{digest}"
    try:
        layout = open_layout(root, db, derivative=True)
        files = layout.get(return_type="object", scope="self", datatype="anat",
                           suffix=["T1w", "mask", "dseg", "xfm"], **subject_query(subjects))
        return list(zip(file_entities(layout, files), [Path(f.path) for f in files], strict=True))
    except Exception as err:  # e.g. dataset_description.json that is not JSON
        LOGGER.warning("pybids could not index %s (%s); reading its file names instead.",
                       root, err)
    out = []
    for path in sorted([*root.glob("sub-*/anat/*"), *root.glob("sub-*/ses-*/anat/*")]):
        entities = parse_name(path.name)
        if entities is not None:
            out.append((entities, path))
    return out
