"""Exit codes of the BIDS-Apps execution specification, as bids_qc uses them."""

from __future__ import annotations

OK = 0
#: Some image failed; the others finished.
IMAGE_FAILED = 1
#: The BIDS input is invalid (missing or unreadable ``dataset_description.json``, no BIDS layout).
INVALID_BIDS = 16
#: The analysis level is neither ``participant`` nor ``group``.
UNKNOWN_LEVEL = 17
#: The participant/session labels or the BIDS filter selected nothing.
NOTHING_SELECTED = 18
#: Usage error (argparse's own exit code 2 is replaced by this one).
USAGE = 64
#: Bad data at dataset level (no selected image could be read).
DATA_ERROR = 65
#: No usable input (group level with no participant results).
NO_INPUT = 66
#: The output directory cannot be created or written.
CANT_CREATE = 73

#: Stopped by Ctrl-C (SIGINT): 128 + 2, as a shell reports it.
INTERRUPTED = 130
#: Stopped by SIGTERM (a scheduler's time limit, ``docker stop``): 128 + 15.
TERMINATED = 143

#: code -> (name, trigger), the source of the README's exit-code table.
TABLE: dict[int, tuple[str, str]] = {
    OK: ("ok", "every selected image processed"),
    IMAGE_FAILED: ("image failed", "at least one image failed; every other image finished"),
    INVALID_BIDS: ("invalid BIDS", "BIDS_DIR is missing, or its dataset_description.json is "
                   "missing or not valid JSON (and --skip-bids-validation was not given)"),
    UNKNOWN_LEVEL: ("unknown analysis level", "the third argument is not participant or group"),
    NOTHING_SELECTED: ("nothing selected", "--participant-label, --session-label or "
                       "--bids-filter-file selected no T1w image"),
    USAGE: ("usage error", "an unknown option, a bad option value, OUTPUT_DIR inside BIDS_DIR, "
            "or OUTPUT_DIR holding another dataset (e.g. derivatives/fmriprep)"),
    DATA_ERROR: ("bad data", "no selected image could be read at all"),
    NO_INPUT: ("no usable input", "the dataset holds no T1w image, or group level finds no "
               "participant results"),
    CANT_CREATE: ("cannot create output", "OUTPUT_DIR or the work directory cannot be created "
                  "or written"),
    INTERRUPTED: ("interrupted", "Ctrl-C (SIGINT); finished images are kept, a rerun resumes"),
    TERMINATED: ("terminated", "SIGTERM (a scheduler's time limit, docker stop); finished "
                 "images are kept, a rerun resumes"),
}
