"""Writable places for caches, whatever the container gives us.

In a container the root filesystem may be read-only, ``HOME`` unwritable or missing, the
user any UID without a passwd entry, and ``/tmp`` read-only (``docker run --read-only``
without ``--tmpfs /tmp``). matplotlib (``MPLCONFIGDIR``, font cache), torch
(``TORCH_HOME``), fontconfig and other XDG users (``XDG_CACHE_HOME``) and nipype (crash
file names via :func:`getpass.getuser`) would then fail or warn. :func:`prepare_runtime`
runs before any of them is imported and points each one that has no writable place at a
private folder in the first writable of ``TMPDIR``, ``/tmp``, ``/var/tmp`` or the ``-w``
work directory.
"""

from __future__ import annotations

import atexit
import getpass
import os
import shutil
import tempfile
from pathlib import Path

#: Environment variables naming cache/config folders of the libraries bids_qc imports.
CACHE_VARS = ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TORCH_HOME")


def _writable_dir(path: Path) -> bool:
    """Whether ``path`` is (or can be created as) a folder this process may write into."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def writable_tmp(work_dir: Path | None = None) -> Path | None:
    """The first writable of ``$TMPDIR``, ``/tmp``, ``/var/tmp`` and ``work_dir``, or None."""
    candidates = [os.environ.get("TMPDIR"), "/tmp", "/var/tmp", work_dir]
    for candidate in candidates:
        if candidate and _writable_dir(Path(candidate)):
            return Path(candidate)
    return None


def prepare_runtime(work_dir: Path | None = None) -> Path | None:
    """Give temp files and library caches writable folders; returns the temp base used.

    Variables already naming a writable folder are kept. Returns None when nothing is
    writable (the caller reports it: no work directory can be made either).
    """
    base = writable_tmp(work_dir)
    if base is None:
        return None
    os.environ["TMPDIR"] = str(base)  # for tempfile here and in every child process
    tempfile.tempdir = None  # re-read TMPDIR
    private: Path | None = None
    for var in CACHE_VARS:
        current = os.environ.get(var)
        # Unset: the library's default lies under HOME.
        if _writable_dir(Path(current)) if current else _home_ok():
            continue
        if private is None:
            private = Path(tempfile.mkdtemp(prefix="bids_qc-cache-", dir=base))
            atexit.register(shutil.rmtree, private, True)
        os.environ[var] = str(private / var.lower())
    if private is not None and not _home_ok():
        os.environ["HOME"] = str(private)
    _ensure_user_name()
    return base


def _home_ok() -> bool:
    home = os.environ.get("HOME")
    return bool(home) and os.access(home, os.W_OK | os.X_OK)


def _ensure_user_name() -> None:
    """Make sure ``LOGNAME`` names the user.

    nipype's SLURM plugin names jobs after ``os.environ["LOGNAME"]`` (a KeyError where it
    is unset: containers, cron, CI) and its crash files after :func:`getpass.getuser`,
    which fails for a UID without a passwd entry (``-u 12345``).
    """
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = f"uid{os.getuid()}"
    os.environ.setdefault("LOGNAME", name)
