"""OUTPUT_DIR as a BIDS-Derivatives dataset: README, Authors, .bidsignore, and the validator.

The unit tests check the files :func:`bids_qc.outputs.init_output_dir` writes and which of
them a rerun may replace. The system test runs the npm ``bids-validator`` 1.15 on a small
real output: it takes the validator from ``PATH`` or ``build/bids-validator/`` (gitignored);
under ``CI=true`` it installs it there with npm when missing, elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bids_qc import __version__
from bids_qc.outputs import (
    BIDSIGNORE,
    DEFAULT_AUTHORS,
    LEGACY_VALIDATOR_CONFIG,
    MARKER,
    init_output_dir,
)
from tests.fakebids import add_freesurfer, make_raw
from tests.system_tools import unavailable, under_ci

REPO = Path(__file__).resolve().parents[1]
VALIDATOR_VERSION = "1.15"
#: npm installs the validator here (``build/`` is gitignored), so CI reuses it.
VALIDATOR_CACHE = REPO / "build" / "bids-validator"
#: Warnings of a correct output: the legacy validator's raw-data rules a derivative cannot
#: meet (demoted by ``.bids-validator-config.json``), and one author (the default).
EXPECTED_WARNINGS = {"SUBJECT_FOLDERS", "NO_VALID_DATA_FOUND_FOR_SUBJECT", "TOO_FEW_AUTHORS"}


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    """A one-subject raw dataset and the OUTPUT_DIR beside it (not yet created)."""
    return make_raw(tmp_path / "ds", ["01"]), tmp_path / "out"


def test_fixed_files_describe_the_dataset(dataset):
    bids, out = dataset
    init_output_dir(out, bids)
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["Authors"] == list(DEFAULT_AUTHORS)
    assert desc["GeneratedBy"][0]["Name"] == "bids_qc"
    assert desc["GeneratedBy"][0]["Version"] == __version__
    readme = (out / "README.md").read_text()
    assert MARKER in readme and f"bids_qc {__version__}" in readme
    assert bids.resolve().as_uri() in readme and "docs/outputs.md" in readme
    assert len(readme) > 150  # the validator warns about a README under 150 characters
    ignore = (out / ".bidsignore").read_text()
    assert ignore.splitlines()[0] == f"# {MARKER}"  # documented: says what it is at the top
    for pattern in ("*.html", "figures/", "logs/", "sub-*/**/anat/*_T1w.json", "group_*.tsv"):
        assert pattern in ignore.splitlines()
    config = json.loads((out / ".bids-validator-config.json").read_text())
    assert config == LEGACY_VALIDATOR_CONFIG and MARKER in config["_comment"]


def test_bidsignore_matches_the_non_bids_files_only():
    """Gitignore semantics (as the validator's ``ignore`` package): reports in, images out."""
    pathspec = pytest.importorskip("pathspec")
    spec = pathspec.PathSpec.from_lines("gitwildmatch", BIDSIGNORE.splitlines())
    for path in ("sub-01_T1w.html", "group_T1w.html", "logs/run-1.json",
                 "sub-01/figures/sub-01_T1w_reg.svg", "sub-01/anat/sub-01_T1w.json",
                 "sub-01/ses-A/anat/sub-01_ses-A_acq-mp_run-1_T1w.json", "group_T1w.tsv",
                 "group_T1w_queue.tsv", "ratings_T1w.tsv", "thresholds_T1w.json"):
        assert spec.match_file(path), path
    for path in ("dataset_description.json", "README.md",
                 "sub-01/anat/sub-01_desc-vinn_dseg.nii.gz",
                 "sub-01/ses-A/anat/sub-01_ses-A_desc-manifoldqc_dseg.nii.gz"):
        assert not spec.match_file(path), path


def test_files_a_user_wrote_are_kept_and_ours_rewritten(dataset):
    bids, out = dataset
    out.mkdir()
    (out / "README.md").write_text("# Our QC of study X\n")
    (out / ".bidsignore").write_text("*.html\nextra/\n")
    (out / ".bids-validator-config.json").write_text('{"ignore": [99]}\n')
    (out / "dataset_description.json").write_text(json.dumps(
        {"Name": "old", "Authors": ["A. Person", "B. Person"],
         "GeneratedBy": [{"Name": "bids_qc"}]}))
    init_output_dir(out, bids)
    assert (out / "README.md").read_text() == "# Our QC of study X\n"
    assert (out / ".bidsignore").read_text() == "*.html\nextra/\n"
    assert (out / ".bids-validator-config.json").read_text() == '{"ignore": [99]}\n'
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["Authors"] == ["A. Person", "B. Person"]  # edited in: kept
    assert desc["GeneratedBy"][0]["Version"] == __version__  # the rest is rewritten

    # Files bids_qc wrote (the marker) are rewritten, stale content and all.
    for name in ("README.md", ".bidsignore", ".bids-validator-config.json"):
        (out / name).write_text(f"old text\n{MARKER}\n")
    init_output_dir(out, bids)
    assert (out / ".bidsignore").read_text() == BIDSIGNORE
    assert f"bids_qc {__version__}" in (out / "README.md").read_text()
    assert json.loads((out / ".bids-validator-config.json").read_text()) == (
        LEGACY_VALIDATOR_CONFIG)


def test_an_earlier_versions_bidsignore_is_rewritten_and_another_readme_kept(dataset):
    bids, out = dataset
    out.mkdir()
    # bids_qc <= 0.2 wrote this (no marker); a user's README without the .md suffix stays.
    (out / ".bidsignore").write_text(
        "*.html\nlogs/\nfigures/\ngroup_*.tsv\nratings_*.tsv\nthresholds_*.json\n")
    (out / "README").write_text("Ours.\n")
    init_output_dir(out, bids)
    assert (out / ".bidsignore").read_text() == BIDSIGNORE
    assert (out / "README").read_text() == "Ours.\n" and not (out / "README.md").exists()


def test_outputs_doc_names_the_marker_and_the_files():
    doc = (REPO / "docs" / "outputs.md").read_text()
    assert MARKER.split(";")[0] in doc  # the doc's quote of the marker is the real one
    for name in ("README.md", ".bidsignore", ".bids-validator-config.json"):
        assert f"`{name}`" in doc


# --- the validator itself ------------------------------------------------------------------


def _validator_version(command: list[str]) -> str:
    try:
        done = subprocess.run([*command, "--version"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def _validator() -> list[str]:
    """The command of bids-validator 1.15: on PATH, in the cache, or installed under CI."""
    node = shutil.which("node")
    cached = [node or "node", str(VALIDATOR_CACHE / "node_modules" / "bids-validator" / "bin"
                                  / "bids-validator")]
    candidates = [[p] for p in [shutil.which("bids-validator")] if p] + [cached]
    for command in candidates:
        if _validator_version(command).startswith(VALIDATOR_VERSION):
            return command
    if not under_ci():
        pytest.skip(f"bids-validator {VALIDATOR_VERSION} (npm) is neither on PATH nor in "
                    f"{VALIDATOR_CACHE}; CI=true installs it there (npm install --prefix "
                    f"{VALIDATOR_CACHE} bids-validator@{VALIDATOR_VERSION})")
    npm = shutil.which("npm")
    if node is None or npm is None:
        unavailable("bids-validator needs node and npm, and one is not on PATH")
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(VALIDATOR_CACHE),
         f"bids-validator@{VALIDATOR_VERSION}"],
        capture_output=True, text=True, timeout=300)
    if not _validator_version(cached).startswith(VALIDATOR_VERSION):
        unavailable(f"npm install bids-validator@{VALIDATOR_VERSION} failed: "
                    f"{(done.stderr or done.stdout)[-800:]}")
    return cached


def test_bids_validator_accepts_a_real_output(tmp_path):
    from bids_qc.cli import run

    validator = _validator()
    bids = make_raw(tmp_path / "ds", ["01", "02"], sessions=["A"])
    for subject in ("01", "02"):
        add_freesurfer(bids, subject, "A")
    linear = tmp_path / "linear.yml"
    linear.write_text("plugin: Linear\nplugin_args: {}\n")  # in-process: fast
    out = tmp_path / "out"
    assert run([str(bids), str(out), "participant", "--participant-label", "01",
                "--plugin-config", str(linear)]) == 0
    assert run([str(bids), str(out), "group"]) == 0

    def issues() -> dict:
        done = subprocess.run([*validator, str(out), "--json"], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
        return json.loads(done.stdout)["issues"]

    found = issues()
    assert found["errors"] == [], found["errors"]
    assert {w["key"] for w in found["warnings"]} <= EXPECTED_WARNINGS, found["warnings"]

    # A segmentation bids_qc writes (--segment, ManifoldQC): a BIDS-Derivatives file the
    # legacy validator's raw-data rules reject, skipped by the dataset's configuration.
    anat = out / "sub-01" / "ses-A" / "anat"
    shutil.copy(bids / "sub-01" / "ses-A" / "anat" / "sub-01_ses-A_T1w.nii.gz",
                anat / "sub-01_ses-A_desc-vinn_dseg.nii.gz")
    found = issues()
    assert found["errors"] == [], found["errors"]
    assert {w["key"] for w in found["warnings"]} <= EXPECTED_WARNINGS, found["warnings"]
