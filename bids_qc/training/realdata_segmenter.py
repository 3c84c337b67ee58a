"""The "Real data" card section of a segmenter (VINN): Dice against real references, volume
plausibility and the per-image table, formatted from its record
(:mod:`bids_qc.training.vinn_realdata` writes it; :mod:`bids_qc.training.realdata_card`
renders it)."""

from __future__ import annotations

from typing import Any

from bids_qc.models.gate import SEGMENTER_GATE
from bids_qc.structures import SUBCORTICAL

_PARTS = ("calibration", "test")
_PROTOCOLS = ("freesurfer", "dlmuse")


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def targets() -> str:
    """The segmenter's gate as a sentence."""
    bars = " and ".join(f">= {v:.2f} against {p} references" for p, v in SEGMENTER_GATE.items())
    return (f"Gate targets, on the real test part: mean subcortical Dice {bars}; every test "
            "image's volumes plausible (bounds fixed on training and calibration references).")


def segmenter_context(record: dict[str, Any]) -> dict[str, Any]:
    """Template context of a segmenter's record (tables as header + rows of strings)."""
    dice, volumes = record.get("dice") or {}, record.get("volumes") or {}
    outside = record.get("outside_cm3") or {}
    summary = []
    for p in _PARTS:
        if p in dice:
            v = volumes.get(p) or {}
            summary.append([p, _f(dice[p].get("freesurfer")), _f(dice[p].get("dlmuse")),
                            f"{len(v.get('implausible', []))} of {v.get('n')}",
                            _f((outside.get(p) or {}).get("max"), 2)])
    structures = []
    for s in SUBCORTICAL:
        row = [s.name]
        for p in _PARTS:
            for proto in _PROTOCOLS:
                row.append(_f(((dice.get(p) or {}).get("structures") or {}).get(proto, {})
                              .get(s.name)))  # fmt: skip
        structures.append(row)
    images = []
    for p in _PARTS:
        for im in (record.get("images") or {}).get(p, []):
            d = (im.get("dice") or {}).get("subcortical_mean")
            reasons = im.get("implausible") or []
            mosaic = f"![{im['item']}]({im['mosaic']})" if im.get("mosaic") else ""
            images.append([p, f"{im['dataset']}/{im['item']}",
                           "x".join(f"{v:g}" for v in im.get("voxel_mm", [])),
                           im.get("protocol", "none"), _f(d), _f(im.get("brain_l"), 2),
                           _f(im.get("outside_cm3"), 2),
                           "yes" if not reasons else "no: " + "; ".join(reasons[:2])
                           + (f" (+{len(reasons) - 2} more)" if len(reasons) > 2 else ""),
                           _f(im.get("cpu_s"), 0), mosaic])
    bounds = record.get("bounds") or {}
    return {
        "segmenter": True, "baseline_rows": [],
        "summary_header": ["part", "Dice vs FreeSurfer", "Dice vs DLMUSE",
                           "implausible volumes", "brain outside reference (cm³, max)"],
        "summary_rows": summary,
        "structure_header": ["structure"] + [f"{p} {proto}" for p in _PARTS
                                             for proto in _PROTOCOLS],
        "structure_rows": structures,
        "image_header": ["part", "image", "voxel (mm)", "reference", "Dice", "brain (L)",
                         "outside (cm³)", "plausible", "CPU s", "mosaic"],
        "image_rows": images,
        "bounds_source": bounds.get("source", "not recorded"),
        "protocol_ratio": ", ".join(f"{k} {v:.2f}" for k, v in
                                    (bounds.get("dlmuse_over_freesurfer") or {}).items()),
        "reference_lr": bounds.get("references_failing_lr_rule", "not recorded"),
    }  # fmt: skip
