"""The "Real data" section of each model card and the README's model table, from records.

:mod:`bids_qc.training.real_gate` measures every model on real images and writes one record
per model (and ``classic.json`` for the classical baselines) into
:data:`bids_qc.models.gate.REALDATA_DIR`. This module turns those records, the registry and
:mod:`bids_qc.schema` into

- a ``## Real data`` section in ``bids_qc/models/cards/<model>.md``, between
  ``<!-- realdata:start -->`` and ``<!-- realdata:end -->`` (inserted before the card's first
  ``##`` section when the markers are absent); the rest of the card is kept byte for byte;
- the table of ``### Metrics and models`` in ``README.md``, between
  ``<!-- models:start -->`` and ``<!-- models:end -->``.

No figure is typed by hand: rerun ``python -m bids_qc.training.realdata_card`` after new
records land; ``--check`` only reports what is stale. A card script that regenerates a card
keeps its section (:func:`bids_qc.training.ledger.write_card`).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from bids_qc.models import gate
from bids_qc.models.gate import GATE, REALDATA_DIR, gate_decision, realdata, wilson
from bids_qc.models.registry import REGISTRY, ModelSpec
from bids_qc.schema import COLUMNS, RZ_PREFIX
from bids_qc.structures import STRUCTURES, SUBCORTICAL
from bids_qc.training.card_sections import REALDATA_MARKERS, environment, replace_section
from bids_qc.training.realdata_segmenter import segmenter_context
from bids_qc.training.realdata_segmenter import targets as segmenter_targets

#: Markers around the generated section of a card, and of the README's table.
CARD_MARKERS = REALDATA_MARKERS
README_MARKERS = ("<!-- models:start -->", "<!-- models:end -->")

#: The shipped cards (package data) and the README of a source checkout (absent when installed).
CARDS_DIR = Path(str(resources.files("bids_qc.models") / "cards"))
README = Path(__file__).resolve().parents[2] / "README.md"

#: Classical baselines measured on the same planted cases as a model (``classic.json``).
BASELINES: dict[str, tuple[str, ...]] = {"regqc": ("reg_cc", "reg_mi")}

#: Display names of the checks (the README's first column).
TITLES = {"classic": "classical", "regqc": "RegQC", "segqc": "SegQC",
          "manifoldqc": "ManifoldQC", "shapeqc": "ShapeQC", "vinn": "VINN (segmentation)"}
#: What a check writes beside its schema columns (files, options), for the README.
NOTES = {
    "classic": "`reg_cc`, `reg_mi` are RegQCNET's baselines",
    "shapeqc": "Grad-CAM figures in `sub-XX/figures/`; `--shapeqc-recall R` re-derives its "
               "thresholds",
    "manifoldqc": "the surrogate segmentation `<entities>_desc-manifoldqc_dseg.nii.gz`",
    "vinn": "writes `sub-X[_ses-Y]..._desc-vinn_dseg.nii.gz` (FreeSurfer codes, the T1w's "
            "grid); `seg_source` = `bids_qc`",
}  # fmt: skip

_PARTS = ("calibration", "test")
# Longest names first, so a structure never matches inside a longer one.
_STRUCTURE = re.compile(
    r"_(" + "|".join(sorted((re.escape(s.name) for s in STRUCTURES), key=len, reverse=True))
    + r")(?=_|$)")


def _is_segmenter(name: str) -> bool:
    """Whether the plugin makes segmentations (its gate and default differ from a check's)."""
    from bids_qc.models.plugins import get_plugin

    return get_plugin(name).role == "segmenter"


# ---------------------------------------------------------------------------------- formatting

def _num(value: Any, digits: int = 3) -> str:
    """A figure for a table (``n/a`` when not measured)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _threshold(value: Any) -> str:
    # Thresholds are shown as fitted, without padding (10, 0.0312).
    return "n/a" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (a ``|`` would split it)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _rate_and_interval(part: dict[str, Any]) -> tuple[float | None, tuple[Any, Any]]:
    # Records carry the rate and its interval; derive them from the counts where they do not.
    n, k = part.get("n"), part.get("flagged")
    rate = part.get("rate")
    if rate is None and n and k is not None:
        rate = k / n
    interval = part.get("wilson95")
    if interval is None and n is not None and k is not None:
        interval = wilson(int(k), int(n))
    lo, hi = interval if interval else (None, None)
    return rate, (lo, hi)


def _rate_text(part: dict[str, Any]) -> str:
    """``12.9% (5.0-29.0%)``: a false-flag rate with its Wilson 95% interval."""
    rate, (lo, hi) = _rate_and_interval(part)
    if rate is None:
        return "n/a"
    return f"{_pct(rate)} ({_pct(lo)}-{_pct(hi)})" if lo is not None else _pct(rate)


def _targets(record: dict[str, Any] | None) -> str:
    """The gate's targets as the record states them (the gate's own where it does not)."""
    t = {**GATE, **((record or {}).get("targets") or {})}
    return (f"Gate targets, on the real test part: false-flag rate <= "
            f"{t['max_false_flag_rate']:.0%} "
            f"of good images; AUROC >= {t['min_auroc']:.2f} and sensitivity >= "
            f"{t['min_sensitivity']:.2f} at the shipped threshold on planted failures.")


# ---------------------------------------------------------------------------------- rendering

def load_records(folder: Path = REALDATA_DIR) -> tuple[dict[str, dict[str, Any] | None],
                                                       dict[str, Any] | None]:
    """Every registered model's real-data record (None: not measured) and ``classic.json``.

    Parameters
    ----------
    folder : Path
        Folder of the generated records.
    """
    return ({s.name: realdata(s.name, folder) for s in REGISTRY}, realdata("classic", folder))


def section_context(spec: ModelSpec, record: dict[str, Any] | None,
                    classic: dict[str, Any] | None, folder: Path = REALDATA_DIR) -> dict[str, Any]:
    """The template context of one model's section: every figure formatted from ``record``.

    Parameters
    ----------
    spec : ModelSpec
        The registered model (its sha256 decides whether the record counts).
    record : dict or None
        Its real-data record.
    classic : dict or None
        ``classic.json``, for the baselines of :data:`BASELINES`.
    folder : Path
        Where the records are (the gate is asked about the same folder).
    """
    source = f"`bids_qc/models/cards/realdata/{spec.name}.json`"
    ctx: dict[str, Any] = {"source": source, "measured": record is not None, "segmenter": False,
                           "targets": segmenter_targets() if _is_segmenter(spec.name)
                           else _targets(record)}
    reasons = gate.why_experimental(spec.name, spec.sha256, folder)
    ctx["passes"] = not reasons
    ctx["reasons"] = "; ".join(reasons)
    if record is None:
        return ctx
    ctx.update(model=spec.name, version=record.get("version", spec.version),
               date=record.get("date", "date not recorded"),
               other_weights=record.get("sha256") != spec.sha256,
               record_sha=str(record.get("sha256") or "none")[:12],
               card_sha=spec.sha256[:12])
    # Gate reasons come from the record itself, also for other weights (what they measured).
    if ctx["other_weights"] and gate_decision(record)["reasons"]:
        ctx["reasons"] += "; and those figures: " + "; ".join(gate_decision(record)["reasons"])
    if record.get("kind") == "segmenter":
        return {**ctx, **segmenter_context(record), "targets": segmenter_targets()}

    good = record.get("good") or {}
    ctx["good_header"] = ["good real images", "images", "flagged",
                          "false-flag rate (Wilson 95%)", "no verdict", "coverage"]
    ctx["good_rows"] = [[p, _num(g.get("n")), _num(g.get("flagged")), _rate_text(g),
                         _num(g.get("no_verdict")), _pct(g.get("coverage"))]
                        for p in _PARTS if (g := good.get(p)) is not None]

    planted = record.get("planted") or {}
    parts = [(p, planted[p]) for p in _PARTS if planted.get(p) is not None]
    errors = [(key, title) for key, title in _ERROR_COLUMNS if any(key in d for _, d in parts)]
    ctx["planted_header"] = (["planted failures", "cases", "positives", "AUROC", "sensitivity",
                              "specificity", "shipped threshold"]
                             + [title for _, title in errors])  # fmt: skip
    ctx["planted_rows"] = [[p, _num(d.get("n")), _num(d.get("positives")), _num(d.get("auroc")),
                            _num(d.get("sensitivity")), _num(d.get("specificity")),
                            _threshold(d.get("threshold"))]
                           + [_error_cell(d, key) for key, _ in errors]
                           for p, d in parts]  # fmt: skip
    ctx.update(named_context(record))
    texts = [(p, d["failure"]) for p, d in parts if d.get("failure")]
    distinct = list(dict.fromkeys(t for _, t in texts))
    ctx["failures"] = [{"parts": "" if len(distinct) == 1 else
                        " (" + ", ".join(p for p, t2 in texts if t2 == t) + ")",
                        "text": t} for t in distinct]

    ctx["baseline_rows"], ctx["fitted_on"] = [], ""
    names = [b for b in BASELINES.get(spec.name, ()) if classic
             and b in (classic.get("planted") or {})]
    if names:
        thresholds = classic.get("thresholds") or {}
        ctx["fitted_on"] = classic.get("fitted_on") or "data not recorded"
        ctx["baseline_header"] = ["baseline", "part", "fitted threshold", "AUROC", "sensitivity",
                                  "specificity", "false-flag rate, good real images (Wilson 95%)"]
        for name in names:
            for p in _PARTS:
                d = classic["planted"][name].get(p)
                if d is None:
                    continue
                g = ((classic.get("good") or {}).get(name) or {}).get(p) or {}
                ctx["baseline_rows"].append(
                    [f"`{name}`", p, _threshold(thresholds.get(name, d.get("threshold"))),
                     _num(d.get("auroc")), _num(d.get("sensitivity")),
                     _num(d.get("specificity")), _rate_text(g)])
    # Free text from the records goes into table cells and list items.
    ctx["failures"] = [{**f, "text": _cell(f["text"])} for f in ctx["failures"]]
    ctx["fitted_on"] = _cell(ctx["fitted_on"])
    return ctx


#: Error columns of the planted table, when a record has them.
_ERROR_COLUMNS = (("mae_mm", "MAE (mm)"), ("damaged_structure_mae", "damaged-structure MAE"),
                  ("mean_dice_mae", "mean-Dice MAE"),
                  ("worst_structure_mae", "worst structure MAE"))  # fmt: skip


def _error_cell(d: dict[str, Any], key: str) -> str:
    if key == "worst_structure_mae" and d.get("worst_structure"):
        return f"{_num(d.get(key))} ({d['worst_structure'].replace('_', ' ')})"
    return _num(d.get(key))


def named_context(record: dict[str, Any]) -> dict[str, Any]:
    """The ten named planted test cases the tests replay (``named_cases`` of the record)."""
    named = ((record.get("named_cases") or {}).get("test")) or {}
    cases = named.get("cases") or []
    if not cases:
        return {"named_rows": []}
    if "A" in cases[0]:
        header = ["image", "planted RMSE (mm)", "predicted (mm)", "error (mm)"]
        rows = [[f"`{c['image']}`", _num(c["rmse_mm"]), _num(c["regqc_rmse_mm"]),
                 _num(abs(c["regqc_rmse_mm"] - c["rmse_mm"]))] for c in cases]  # fmt: skip
    else:
        from ..structures import STRUCTURE_NAMES

        header = ["image", "damaged structure", "family", "true Dice", "predicted Dice"]
        rows = [[f"`{c['image']}`", c["structure"].replace("_", " "), c["family"],
                 _num(c["dice"]), _num(c["segqc_all"][STRUCTURE_NAMES.index(c["structure"])])]
                for c in cases]  # fmt: skip
    return {"named_header": header, "named_rows": rows, "named_mae": _num(named.get("mae"))}


def render_section(spec: ModelSpec, record: dict[str, Any] | None,
                   classic: dict[str, Any] | None = None,
                   folder: Path = REALDATA_DIR) -> str:
    """The ``## Real data`` section of one model card (markdown, no markers).

    Parameters
    ----------
    spec, record, classic, folder
        As :func:`section_context`.
    """
    text = environment().get_template("realdata_section.md.j2").render(
        **section_context(spec, record, classic, folder))
    # One blank line between blocks, whatever the template's conditionals left.
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def _check_columns(producers: Sequence[str]) -> str:
    """A check's output columns from the schema, one per pattern (``segqc_dice_<structure>``)."""
    patterns: dict[str, set[str]] = {}
    for c in COLUMNS:
        if c.producer not in producers or c.name.startswith(RZ_PREFIX):
            continue  # rz_* scores exist for every metric; docs/outputs.md lists them
        found = _STRUCTURE.findall(c.name)
        patterns.setdefault(_STRUCTURE.sub("_<structure>", c.name), set()).update(found)
    out = []
    items = list(patterns.items())
    for k, (pattern, names) in enumerate(items):
        text = f"`{pattern}`"
        # A run of patterns over the same structures is annotated once, after its last.
        last = k + 1 == len(items) or items[k + 1][1] != names
        if names and len(names) < len(STRUCTURES) and last:
            kind = " subcortical" if names == {s.name for s in SUBCORTICAL} else ""
            text += f" ({len(names)}{kind} structures)"
        out.append(text)
    return ", ".join(out)


def _gate_summary(spec: ModelSpec, record: dict[str, Any] | None) -> str:
    """The README's gate cell: the two test figures with their n, and the card's link."""
    link = f"[its card](bids_qc/models/cards/{spec.name}.md#real-data)"
    if record is None:
        return f"not yet measured on real images; {link}"
    if record.get("sha256") != spec.sha256:
        return f"its real-data figures are of other weights (retrained since); {link}"
    good = (record.get("good") or {}).get("test") or {}
    planted = (record.get("planted") or {}).get("test") or {}
    rate, _ = _rate_and_interval(good)
    figures = []
    if record.get("kind") == "segmenter":
        dice = (record.get("dice") or {}).get("test") or {}
        vols = (record.get("volumes") or {}).get("test") or {}
        figures += [f"mean subcortical Dice {_num(dice[p])} against {p} references"
                    for p in ("freesurfer", "dlmuse") if dice.get(p) is not None]
        if vols:
            figures.append(f"implausible volumes on {len(vols.get('implausible', []))} of "
                           f"{_num(vols.get('n'))} real test images")
    if rate is not None:
        figures.append(f"false flags on {_pct(rate)} of {_num(good.get('n'))} good real test "
                       "images")
    if planted.get("auroc") is not None:
        figures.append(f"AUROC {_num(planted['auroc'])} on {_num(planted.get('n'))} planted "
                       f"real failures ({_num(planted.get('positives'))} positive)")
    verdict = "passes" if gate_decision(record)["passes"] else "not passed"
    return _cell(f"{verdict}: " + (", ".join(figures) or "no figures") + f"; {link}")


def readme_context(records: dict[str, dict[str, Any] | None], classic: dict[str, Any] | None,
                   folder: Path = REALDATA_DIR) -> dict[str, Any]:
    """The README table's rows: the classical checks, then every registered model.

    Whether a model runs by default is the registry's rule (:func:`bids_qc.models.gate.passes`
    on ``folder``), so for the shipped folder it is ``spec.experimental``.
    """
    classic_gate = "not gated (classical measures)"
    if classic:
        planted = classic.get("planted") or {}
        aucs = [f"`{b}` AUROC {_num(((planted.get(b) or {}).get('test') or {}).get('auroc'))}"
                for b in BASELINES["regqc"]]
        classic_gate += (f"; on RegQC's planted real test failures: {', '.join(aucs)} "
                         "([RegQC's card](bids_qc/models/cards/regqc.md#real-data))")
        out = ((classic.get("outliers") or {}).get("test") or {})
        if out.get("n"):
            lo, hi = out["wilson95"]
            classic_gate += (f"; dataset-relative outliers (advisory, `rz_outliers`): "
                             f"{out['flagged']} of {out['n']} good real test images "
                             f"({out['rate']:.1%}, Wilson 95% {lo:.1%}-{hi:.1%})")
    rows = [{"check": TITLES["classic"],
             "columns": _check_columns(("classic", "group")) + f" ({NOTES['classic']})",
             "default": "always run", "gate": classic_gate}]
    for spec in REGISTRY:
        experimental = bool(gate.why_experimental(spec.name, spec.sha256, folder))
        columns = _check_columns((spec.name,))
        note = NOTES.get(spec.name, "")
        columns = "; ".join(x for x in (columns, note) if x)
        if not spec.is_installed():
            default = "no: its weights are not in this installation"
        elif _is_segmenter(spec.name):  # an input provider, switched by --segment
            default = ("**experimental**: segments only with `--models vinn` or "
                       "`--segment always`" if experimental else
                       "yes: segments images without a FreeSurfer-coded segmentation "
                       "(`--segment auto`)")
        else:
            default = (f"**experimental**: runs only with `--models {spec.name}`"
                       if experimental else "yes")
        rows.append({"check": TITLES.get(spec.name, spec.name), "columns": columns,
                     "default": default, "gate": _gate_summary(spec, records.get(spec.name))})
    return {"rows": rows}


def render_readme_table(records: dict[str, dict[str, Any] | None],
                        classic: dict[str, Any] | None, folder: Path = REALDATA_DIR) -> str:
    """The README's model table (markdown, no markers)."""
    text = environment().get_template("readme_models.md.j2").render(
        **readme_context(records, classic, folder))
    return text.strip("\n") + "\n"


def update(folder: Path = REALDATA_DIR, cards_dir: Path = CARDS_DIR,
           readme: Path | None = README, check: bool = False) -> list[Path]:
    """Rewrite (or with ``check`` only find) every stale card section and the README table.

    Parameters
    ----------
    folder : Path
        The real-data records.
    cards_dir : Path
        The model cards (``<model>.md``); a model without a card is skipped.
    readme : Path or None
        The README; None or an absent file (an installed package) skips it.
    check : bool
        Write nothing.

    Returns
    -------
    list of Path
        The files that were (or, with ``check``, would be) rewritten.
    """
    records, classic = load_records(folder)
    targets: list[tuple[Path, str, tuple[str, str]]] = []
    for spec in REGISTRY:
        card = Path(cards_dir) / f"{spec.name}.md"
        if card.is_file():
            targets.append((card, render_section(spec, records[spec.name], classic, folder),
                            CARD_MARKERS))
    if readme is not None and Path(readme).is_file():
        targets.append((Path(readme), render_readme_table(records, classic, folder),
                        README_MARKERS))
    stale = []
    for path, body, markers in targets:
        old = path.read_text(encoding="utf-8")
        new = replace_section(old, body, markers)
        if new != old:
            stale.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    """Write the real-data sections of the cards and the README's model table."""
    parser = argparse.ArgumentParser(
        prog="python -m bids_qc.training.realdata_card",
        description="Write the 'Real data' section of every model card and the README's model "
                    "table from the real-data records and the registry.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a card or the README is out of date")
    parser.add_argument("--realdata", type=Path, default=REALDATA_DIR,
                        help="folder of the records (default: the shipped one)")
    parser.add_argument("--cards", type=Path, default=CARDS_DIR, help="folder of the cards")
    parser.add_argument("--readme", type=Path, default=README, help="the README to update")
    ns = parser.parse_args(argv)
    stale = update(ns.realdata, ns.cards, ns.readme, check=ns.check)
    for path in stale:
        print(f"{path}: {'out of date' if ns.check else 'rewritten'}")
    if ns.check and stale:
        print("run `python -m bids_qc.training.realdata_card` to regenerate them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
