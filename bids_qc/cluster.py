"""First step of a cluster run: index the dataset once and list the participants.

``python3 -m bids_qc.cluster BIDS_DIR OUTPUT_DIR participant --bids-database-dir DIR
[selection options]`` takes bids_qc's own options, builds the pybids database in ``DIR``
exactly as a participant run would (so array jobs given the same ``--bids-database-dir``
load it instead of each indexing the dataset) and prints the participant labels the
options select, one per line, without ``sub-``. ``cluster/slurm_array.sh`` maps array task
N to line N.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import exitcodes
from .cli import UsageError, _fail, parse_settings
from .errors import DatasetError


def list_participants(argv: Sequence[str] | None = None) -> list[str]:
    """Index the dataset into ``--bids-database-dir``; the selected participant labels.

    Raises
    ------
    UsageError
        When ``--bids-database-dir`` is missing (the point of this step).
    DatasetError
        As a participant run would (no dataset, nothing selected, ...).
    """
    from .bids import check_dataset, collect_inputs

    settings = parse_settings(argv)
    if settings.bids_database_dir is None:
        raise UsageError("--bids-database-dir DIR is needed: the array jobs reuse the "
                         "database this step builds there")
    check_dataset(settings.bids_dir, settings.skip_bids_validation)
    return sorted({row.subject for row in collect_inputs(settings)})


def main(argv: Sequence[str] | None = None) -> int:
    """Print the labels; the exit codes are bids_qc's."""
    try:
        labels = list_participants(argv)
    except UsageError as exc:
        return _fail(exitcodes.USAGE, str(exc))
    except DatasetError as exc:
        return _fail(exc.exit_code, str(exc))
    print("\n".join(labels))
    return exitcodes.OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
