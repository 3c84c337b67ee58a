"""The documentation: generated pages are current and the MkDocs site builds without warnings."""

from __future__ import annotations

import argparse
import html
import subprocess
import sys
from pathlib import Path

import pytest

from bids_qc import __version__, cli, docs_cli, docs_pages
from bids_qc.models.registry import KNOWN_MODELS, REGISTRY
from bids_qc.training.licences import DATA_SOURCES

ROOT = Path(__file__).resolve().parents[1]


def test_cli_doc_is_generated_from_the_parsers():
    doc = ROOT / "docs" / "cli.md"
    assert doc.read_text() == docs_cli.render_markdown(), (
        "docs/cli.md is stale: run `python -m bids_qc.docs_cli > docs/cli.md`"
    )


def test_cli_doc_lists_every_option_with_its_default():
    text = docs_cli.render_markdown()
    options = [o for a in cli.build_parser()._actions for o in a.option_strings]
    assert "--participant-label" in options and "--thresholds" in options
    for option in options:
        assert f"`{option}" in text, option
    assert "| `--segqc-threshold DICE` | `0.7` |" in text
    assert "| `--seg-source {auto,freesurfer,fastsurfer,fmriprep}` | `auto` |" in text
    for prog in ("bids_qc-ratings", "bids_qc-calibrate", "bids_qc-demo"):
        assert f"## `{prog}`" in text


def test_cli_doc_follows_a_new_option():
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("data", help="input | output")
    parser.add_argument("--level", type=int, default=3, metavar="N", help="how deep")
    text = "\n".join(docs_cli.render_parser(parser, "A tool."))
    assert "tool DATA [options]" in text
    assert "| `--level N` | `3` | how deep |" in text
    assert "| `DATA` |  | input \\| output |" in text  # a pipe would split the table cell


def test_every_known_model_has_a_page_and_notes():
    names = docs_pages.model_names()
    assert names[: len(REGISTRY)] == [s.name for s in REGISTRY]
    assert set(KNOWN_MODELS) <= set(names)
    for name in names:
        assert (ROOT / "docs" / docs_pages.NOTES_DIR / f"{name}.md").is_file(), (
            f"write docs/model_notes/{name}.md: how {name} works, what it was trained on, "
            "when not to trust it"
        )


def test_model_page_carries_the_registry_entry_and_the_card():
    for spec in REGISTRY:
        page = docs_pages.render_model_page(spec.name, "## How it works\n\nNotes.")
        assert page.startswith(f"# {docs_pages.model_title(spec.name)} (`{spec.name}`)")
        assert spec.sha256 in page and "## How it works" in page
        card = docs_pages.read_card(spec.name)
        assert card is not None, f"{spec.name} is registered without a card"
        # The card's sections sit one level below its title, which sits below the page's.
        assert "\n### Licences\n" in page
        assert card.splitlines()[-1] in page
        assert "In development" not in page
    page = docs_pages.render_model_page("not_a_model", None)
    assert "no card yet" in page and '!!! note "In development"' in page


def test_includes_and_generated_tables(tmp_path):
    (tmp_path / "job.sh").write_text("#!/bin/bash\necho hi\n")
    (tmp_path / "NOTES.md").write_text("# Notes\n\ntext\n")
    markdown = ("a\n<!-- include: job.sh bash -->\n<!-- include: NOTES.md -->\n"
                "<!-- include: cluster/absent.sh bash -->\n<!-- generated: data-sources -->\n")
    out = docs_pages.expand_includes(markdown, tmp_path)
    assert "```bash\n#!/bin/bash\necho hi\n```" in out
    assert "# Notes\n\ntext\n" in out
    assert "`cluster/absent.sh` is not in this copy" in out
    assert all(f"| `{key}` |" in out for key in DATA_SOURCES)
    assert "<!--" not in out


def test_mkdocs_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is in the test extra: pip install -e .[test]")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    for name in docs_pages.model_names():
        assert (site / "models" / name / "index.html").is_file(), name
    for spec in REGISTRY:
        assert spec.sha256 in (site / "models" / spec.name / "index.html").read_text()
    assert f"bids_qc {__version__}" in (site / "index.html").read_text()
    assert f"[{__version__}]" in (site / "changelog" / "index.html").read_text()
    licences = (site / "licences" / "index.html").read_text()
    assert all(f"<code>{key}</code>" in licences for key in DATA_SOURCES)
    assert "CC0" in licences and "Apache-2.0" in licences
    cluster = (site / "cluster" / "index.html").read_text()
    script = ROOT / "cluster" / "slurm_array.sh"
    if script.is_file():  # included at build time, never copied into the page
        lines = [ln for ln in script.read_text().splitlines() if ln.strip()]
        assert html.escape(lines[-1]) in cluster
    else:
        assert "is not in this copy of the bids_qc sources" in cluster
    assert "--participant-label" in (site / "cli" / "index.html").read_text()
