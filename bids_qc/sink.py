"""The output sink: files made by nodes reach OUTPUT_DIR only through ``WriteResults``.

A node (VINN, the registration, ManifoldQC, ShapeQC) writes its files into its own
working directory and lists them in its stage result under ``"publish"``: the work-dir
path and where the file belongs, relative to OUTPUT_DIR. ``WriteResults`` (which always
runs) copies every listed file atomically into OUTPUT_DIR and rewrites the work-dir paths
in the stage results and the row into the published ones, so the participant JSON never
names a work-dir file.

Why: a node whose result nipype has cached does not run again, so a file it had written
straight into OUTPUT_DIR and that was deleted since would never come back with a kept
work directory (``-w``, as the SLURM script keeps it), not even with ``--force``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .io import atomic_write_bytes

#: The stage-result key listing a node's files to publish: ``{work_path: relative_dest}``.
PUBLISH_KEY = "publish"


def publish(stages: list[dict[str, Any]], output_dir: Path) -> dict[str, str]:
    """Copy each stage's listed files into ``output_dir``, atomically.

    Returns
    -------
    dict
        Work-dir path to published path (both as strings) of every file copied.

    Raises
    ------
    FileNotFoundError
        When a listed work-dir file is missing (its node's directory was removed).
    ValueError
        When a destination is absolute or leaves ``output_dir``.
    """
    done: dict[str, str] = {}
    for stage in stages:
        for work, rel in (stage.get(PUBLISH_KEY) or {}).items():
            rel_path = Path(rel)
            if rel_path.is_absolute() or ".." in rel_path.parts:
                raise ValueError(f"{stage.get('stage')}: publish destination {rel} is not "
                                 "inside the output dataset")
            dest = Path(output_dir) / rel_path
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dest, Path(work).read_bytes())
            done[str(work)] = str(dest)
    return done


def retarget(obj: Any, paths: dict[str, str]) -> Any:
    """``obj`` (JSON-like) with every string that is a work-dir path in ``paths`` replaced
    by its published path; the ``"publish"`` lists themselves are dropped."""
    if isinstance(obj, dict):
        return {k: retarget(v, paths) for k, v in obj.items() if k != PUBLISH_KEY}
    if isinstance(obj, list):
        return [retarget(v, paths) for v in obj]
    if isinstance(obj, str):
        return paths.get(obj, obj)
    return obj
