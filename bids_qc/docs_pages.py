"""Documentation pages built from the code at ``mkdocs build`` time (an MkDocs hook).

``mkdocs.yml`` names this file under ``hooks:``; MkDocs then calls :func:`on_config`,
:func:`on_files` and :func:`on_page_markdown`. Nothing here is committed output:

- one page per model, ``models/<name>.md``, from the registry
  (:mod:`bids_qc.models.registry`), the hand-written notes in
  ``docs/model_notes/<name>.md`` and the generated card
  ``bids_qc/models/cards/<name>.md``; a model added to the registry, to ``KNOWN_MODELS``
  or given a notes file or card appears without touching ``mkdocs.yml``;
- ``models/index.md``, the table of every model;
- ``<!-- include: PATH [lang] -->`` lines in any page are replaced by the file at PATH
  (relative to the repository root; as a fenced code block when ``lang`` is given, as
  markdown otherwise); a file that is absent gives a note instead of failing the build;
- ``<!-- generated: data-sources -->`` becomes the table of
  :data:`bids_qc.training.licences.DATA_SOURCES`.

Imports are absolute: MkDocs loads this file by path, not as part of the package.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger("mkdocs.hooks.bids_qc")

#: Folder (under the docs folder) of the hand-written notes of each model.
NOTES_DIR = "model_notes"
#: Section of ``nav`` in ``mkdocs.yml`` that the model pages are appended to.
NAV_SECTION = "Models"

_INCLUDE = re.compile(r"^<!-- include: (?P<path>\S+)(?: (?P<lang>\w+))? -->$", re.MULTILINE)
_DATA_SOURCES = "<!-- generated: data-sources -->"


def model_names() -> list[str]:
    """Every model to document: the registry's, then the other known names, in order."""
    from bids_qc.models.registry import KNOWN_MODELS, REGISTRY

    names = [s.name for s in REGISTRY]
    return names + [n for n in KNOWN_MODELS if n not in names]


def model_title(name: str) -> str:
    """Display name of a model (``segqc`` -> ``SegQC``), from its plugin."""
    from bids_qc.models.plugins import PLUGINS

    return next((p.title for p in PLUGINS if p.name == name), name)


def read_card(name: str) -> str | None:
    """The generated card of a model, or None when it has none yet."""
    card = resources.files("bids_qc.models") / "cards" / f"{name}.md"
    return card.read_text(encoding="utf-8") if card.is_file() else None


def _status(name: str) -> str:
    from bids_qc.models.registry import REGISTRY

    spec = next((s for s in REGISTRY if s.name == name), None)
    if spec is None:
        return "in development: not in this release (runs are skipped with that reason)"
    if not spec.is_installed():
        return "registered, but its weights are not in this installation"
    if spec.experimental:
        return f"experimental: runs only when named, `--models {name}`"
    return "shipped: runs by default when its inputs exist"


def _demote(markdown: str) -> str:
    """Headings one level down (the card's title becomes a section of the model page)."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,5} ", line):
            line = "#" + line
        out.append(line)
    return "\n".join(out) + "\n"


def render_model_page(name: str, notes: str | None) -> str:
    """``models/<name>.md``: status, registry entry, notes, then the card.

    Parameters
    ----------
    name : str
        Model name (``segqc``).
    notes : str or None
        The hand-written notes (how it works, when not to trust it), or None.
    """
    from bids_qc.models.registry import REGISTRY
    from bids_qc.schema import COLUMNS

    spec = next((s for s in REGISTRY if s.name == name), None)
    columns = [c.name for c in COLUMNS if c.producer == name]
    rows = [("status", _status(name))]
    if spec is not None:
        rows += [("version", spec.version), ("what it predicts", spec.description),
                 ("weights", f"`{spec.weights}`, sha256 `{spec.sha256}`"),
                 ("inputs it needs", ", ".join(f"`{n}`" for n in spec.needs))]  # fmt: skip
    if columns:
        shown = ", ".join(f"`{c}`" for c in columns[:4]) + (", ..." if len(columns) > 4 else "")
        rows.append(("columns", f"{len(columns)}: {shown} (see [Outputs](../outputs.md))"))
    lines = [f"# {model_title(name)} (`{name}`)", ""]
    if spec is None:  # goes away by itself once the model is registered
        lines += ['!!! note "In development"',
                  f"    {model_title(name)} is being built and is not in this release: runs "
                  "skip it with that reason. The notes below describe its design; its model "
                  "card, with measured numbers, will appear on this page once it ships.", ""]
    lines += ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    if notes:
        lines += [notes.strip(), ""]
    card = read_card(name)
    if card is None:
        lines += ["## Model card", "",
                  "This model has no card yet: it is being built, and no number about it has "
                  "been measured for a release. The text above describes its design, not its "
                  "performance.", ""]  # fmt: skip
    else:
        # The card's own title becomes this page's "model card" section.
        lines += [_demote(card), f"*The card above is `bids_qc/models/cards/{name}.md`, "
                  "generated from an evaluation run by its script in `bids_qc/training/`.*",
                  ""]  # fmt: skip
    return "\n".join(lines).rstrip("\n") + "\n"


def render_models_index() -> str:
    """``models/index.md``: every model, its status and what it predicts."""
    from bids_qc.models.registry import REGISTRY

    specs = {s.name: s for s in REGISTRY}
    lines = ["# Models", "",
             "bids_qc's QC models, from the model registry (`bids_qc/models/registry.py`). "
             "Each page says how the model works, what it was trained on, what its card "
             "measured and when not to trust it. Columns computed without a model "
             "(`reg_cc`, `reg_mi`, `vol_<structure>`) are described in "
             "[Outputs](../outputs.md).", "",
             "| model | status | what it predicts |", "|---|---|---|"]  # fmt: skip
    for name in model_names():
        what = specs[name].description if name in specs else "(in development)"
        lines.append(f"| [{model_title(name)}]({name}.md) | {_status(name)} | {what} |")
    return "\n".join(lines) + "\n"


def render_data_sources() -> str:
    """The table of every data source a model card may list, with its terms."""
    from bids_qc.training.licences import DATA_SOURCES, WEIGHTS_LICENCE

    lines = [f"Shipped weights: {WEIGHTS_LICENCE}.", "",
             "| key | data | licence | source |", "|---|---|---|---|"]
    for key, src in DATA_SOURCES.items():
        lines.append(f"| `{key}` | {src.title} | {src.licence} | {src.source} |")
    return "\n".join(lines) + "\n"


def expand_includes(markdown: str, root: Path) -> str:
    """Replace include markers by the files they name (see the module docstring)."""

    def include(match: re.Match) -> str:
        path = root / match["path"]
        if not path.is_file():
            LOGGER.info("bids_qc docs: %s is absent; the page says so", match["path"])
            return (f"*`{match['path']}` is not in this copy of the bids_qc sources; find it "
                    "in the source repository or the source distribution.*")
        text = path.read_text(encoding="utf-8").rstrip("\n")
        if match["lang"]:
            return f"```{match['lang']}\n{text}\n```"
        return text

    markdown = _INCLUDE.sub(include, markdown)
    if _DATA_SOURCES in markdown:
        markdown = markdown.replace(_DATA_SOURCES, render_data_sources())
    return markdown


# --------------------------------------------------------------------------------------
# MkDocs hooks


def _repo_root(config: Any) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def on_config(config: Any) -> Any:
    """Put the version in the site name and every model page into the navigation."""
    from bids_qc import __version__

    config["site_name"] = f"{config['site_name']} {__version__}"
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and NAV_SECTION in entry:
            section = entry[NAV_SECTION]
            section += [{model_title(n): f"models/{n}.md"} for n in model_names()]
    return config


def on_files(files: Any, config: Any) -> Any:
    """Add the generated model pages (notes files are sources, not pages)."""
    from mkdocs.structure.files import File

    docs = Path(config["docs_dir"])
    pages = {"models/index.md": render_models_index()}
    for name in model_names():
        notes = docs / NOTES_DIR / f"{name}.md"
        pages[f"models/{name}.md"] = render_model_page(
            name, notes.read_text(encoding="utf-8") if notes.is_file() else None)
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    # Figures a card links to (e.g. ShapeQC's failure examples) sit beside the card.
    cards = resources.files("bids_qc.models") / "cards"
    for figure in sorted(p for p in cards.iterdir() if p.name.endswith(".png")):
        files.append(File.generated(config, f"models/{figure.name}",
                                    content=figure.read_bytes()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Expand include and generated markers."""
    return expand_includes(markdown, _repo_root(config))
