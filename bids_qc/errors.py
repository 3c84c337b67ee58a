"""Errors with messages a user can act on.

Every error bids_qc raises for bad input names the file and says what to do.
"""

from __future__ import annotations

from pathlib import Path


class BidsQCError(Exception):
    """Base class of bids_qc's own errors."""


class InputError(BidsQCError, ValueError):
    """An input file cannot be used.

    Parameters
    ----------
    path : str or Path or None
        The offending file.
    problem : str
        What is wrong with it.
    hint : str
        What the user can do about it.
    """

    def __init__(self, path: str | Path | None, problem: str, hint: str = "") -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.hint = hint
        where = f"{self.path}: " if self.path else ""
        tail = f" {hint}" if hint else ""
        super().__init__(f"{where}{problem}.{tail}".replace("..", "."))

    def as_dict(self) -> dict[str, str | None]:
        """JSON-ready description (file, problem, hint)."""
        return {"file": self.path, "problem": self.problem, "hint": self.hint}


class DatasetError(BidsQCError):
    """A dataset-level problem that stops the run with a BIDS-Apps exit code.

    Parameters
    ----------
    message : str
        One line saying what is wrong and what to do.
    exit_code : int
        The BIDS-Apps exit code (see :mod:`bids_qc.exitcodes`).
    """

    def __init__(self, message: str, exit_code: int) -> None:
        self.exit_code = exit_code
        super().__init__(message)


class Terminated(KeyboardInterrupt):
    """The run was stopped by a signal (SIGTERM from a scheduler or ``docker stop``).

    A :class:`KeyboardInterrupt` so that every cleanup path for Ctrl-C runs for it too;
    the exit code follows the shell's convention, 128 + the signal number.

    Parameters
    ----------
    signum : int
        The signal received.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by signal {self.signum}")
