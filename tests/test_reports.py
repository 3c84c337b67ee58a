"""Participant reports: sections, escaping, figures, self-containment, WriteResults."""

from __future__ import annotations

import base64
import json
import re

import pytest

from bids_qc.interfaces.results import WriteResults
from bids_qc.reports.checks import check_spec, evaluate
from bids_qc.reports.figures import registration_mosaic, segmentation_mosaic
from bids_qc.reports.participant import write_participant_report
from bids_qc.reports.render import render
from bids_qc.results import stage_result
from tests.test_reports_helpers import synthetic_result, tiny_png, tiny_volumes

EVIL = '<script>alert("x")</script>'
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def external_references(html: str) -> list[str]:
    """Every src/href that would make the browser load something from outside the file."""
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    return [r for r in refs if not (r.startswith(("data:", "#")) or re.fullmatch(
        r"[\w.-]+\.html", r))]


def test_autoescape_is_on_for_every_template():
    html = render("participant.html.j2", **_minimal_context(EVIL))
    assert EVIL not in html and "&lt;script&gt;alert(" in html


def _minimal_context(text):
    from bids_qc.reports.participant import participant_context

    res = synthetic_result("sub-01_T1w", error=text)
    res["provenance"]["inputs"] = {"t1w": {"path": f"/data/{text}.nii.gz", "source": "raw"}}
    res["provenance"]["fingerprint"]["inputs"] = {"t1w": None}
    return participant_context(res, output_dir=".")


def test_file_names_and_error_text_are_escaped(tmp_path):
    res = synthetic_result("sub-01_T1w", error=f"bad codes {EVIL}")
    res["errors"][0]["traceback"] = f"Traceback ... {EVIL}"
    res["warnings"] = [f"warn {EVIL}"]
    res["provenance"]["inputs"] = {"seg": {"path": f"/x/{EVIL}/aseg.mgz", "source": "fmriprep"}}
    res["provenance"]["fingerprint"]["inputs"] = {"seg": "0" * 32}
    html = write_participant_report(res, tmp_path).read_text()
    assert "<script>alert" not in html
    assert html.count("&lt;script&gt;alert(") >= 4  # error, traceback, warning, path
    assert "Traceback ..." in html  # the node error in full


def test_summary_verdicts_values_thresholds_and_skipped(tmp_path):
    res = synthetic_result("sub-02_T1w", rmse=25.0, dice=0.5, pfail=0.6,
                           thresholds={"regqc_rmse_mm": 12.0, "segqc_dice": 0.6})
    res["skipped"] = [{"model": "vinn", "reason": "its weights are missing"}]
    html = write_participant_report(res, tmp_path).read_text()
    summary = html.split('id="registration"')[0]
    assert "regqc_flag" in summary and "25.000" in summary and "&gt; 12.000" in summary
    assert "segqc_flag" in summary and "&lt; 0.600" in summary
    assert 'class="badge fail"' in summary and "vinn: its weights are missing" in summary
    assert "Predicted Dice per structure" in html and "manifoldqc" in html
    assert "P(FAIL)" in html
    assert "sha256" in html and "ab" * 32 in html  # weights sha256 in the provenance


def test_experimental_models_are_labelled_in_the_summary(tmp_path):
    from bids_qc.models.registry import REGISTRY

    experimental = {s.name for s in REGISTRY if s.experimental}
    res = synthetic_result("sub-02_T1w", rmse=25.0, dice=0.5, pfail=0.6)
    summary = write_participant_report(res, tmp_path).read_text().split('id="registration"')[0]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr><td><code>(\w+)</code>.*?</tr>",
                                                         summary)}  # fmt: skip
    assert {"regqc_flag", "segqc_flag", "manifoldqc_flag"} <= set(rows)
    for flag, row in rows.items():
        assert ("experimental</span>" in row) == (flag.split("_")[0] in experimental), row


def test_checks_take_run_thresholds_and_orient_ratios():
    res = synthetic_result("sub-03_T1w", rmse=20.0, dice=0.35, pfail=None,
                           thresholds={"regqc_rmse_mm": 10.0, "segqc_dice": 0.7})
    out = {o.spec.flag: o for o in evaluate(res)}
    assert out["regqc_flag"].ratio == pytest.approx(2.0)
    assert out["segqc_flag"].value == pytest.approx(0.30)  # lowest structure Dice
    assert out["segqc_flag"].ratio == pytest.approx(0.7 / 0.30)
    assert out["manifoldqc_flag"].threshold == 0.7  # the default
    # What a model stage recorded it used wins over the run's option.
    res["provenance"]["stages"]["segqc"] = {"threshold": 0.5}
    assert {o.spec.flag: o for o in evaluate(res)}["segqc_flag"].threshold == 0.5
    with pytest.raises(ValueError, match="not a check"):
        check_spec("reg_cc")


def test_gradcam_flagged_only_unless_verbose(tmp_path):
    png = tiny_png(tmp_path / "cam.png")
    renders = {s: str(png) for s in ("left_hippocampus", "right_hippocampus", "left_putamen")}
    shape = stage_result("shapeqc", {}, [], [], [], {"gradcam": renders})
    # pfail 0.1, 0.4, 0.7: only left_putamen is flagged.
    res = synthetic_result("sub-04_T1w", pfail=0.1, stages=[shape])
    quiet = write_participant_report(res, tmp_path).read_text()
    loud = write_participant_report(res, tmp_path, verbose=True).read_text()
    assert quiet.count('alt="Grad-CAM: ') == 1 and 'alt="Grad-CAM: left_putamen"' in quiet
    assert loud.count('alt="Grad-CAM: ') == 3


def test_figures_are_png_data_uris(tmp_path):
    vols = tiny_volumes(tmp_path / "v")
    reg = registration_mosaic(vols["t1w_tpl"], vols["template"])
    seg = segmentation_mosaic(vols["t1w_tpl"], vols["seg"])
    for fig in (reg, seg):
        assert fig.note is None and fig.uri.startswith("data:image/png;base64,")
        assert base64.b64decode(fig.uri.split(",", 1)[1])[:8] == PNG_MAGIC
    assert {item.name for item in seg.legend} >= {"left hippocampus", "right hippocampus"}


def test_broken_figure_inputs_leave_a_note_not_a_failure(tmp_path):
    classic = stage_result("classic", {}, [], [], [], {
        "template_space_t1w": str(tmp_path / "gone.nii.gz"),
        "template": {"file": str(tmp_path / "also_gone.nii.gz")}})
    res = synthetic_result("sub-05_T1w")
    html = write_participant_report(res, tmp_path, stages=[classic],
                                    qc_input={"seg": str(tmp_path / "no_seg.nii.gz")}).read_text()
    assert html.count("could not draw this figure") == 2


def _shape_result():
    """A stand-in for ShapeQC's StructureResult: a tetrahedron and flat maps."""
    from types import SimpleNamespace

    import numpy as np

    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
    features = SimpleNamespace(maps=np.zeros((4, 8, 8)), faces=faces, vertices=vertices)
    return SimpleNamespace(structure="left_putamen", pfail=0.9, heat=np.zeros((8, 8)),
                           features=features, vertex_heat=np.linspace(0, 1, 4))


def test_gradcam_figure_writes_a_png(tmp_path):
    from bids_qc.reports.shape_figures import gradcam_figure

    path = gradcam_figure(_shape_result(), tmp_path / "figures" / "x_shapeqc.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in path.parent.iterdir()) == ["x_shapeqc.png"]


@pytest.mark.parametrize("failure", ["save", "rename"])
def test_gradcam_figure_leaves_no_temp_file_on_error(tmp_path, monkeypatch, failure):
    import os
    from pathlib import Path

    from matplotlib.figure import Figure

    from bids_qc.reports.shape_figures import gradcam_figure

    def interrupted_save(fig, fname, *args, **kwargs):
        # Part of a file, then Ctrl-C: as a run stopped while the PNG was written.
        if isinstance(fname, (str, os.PathLike)):
            Path(fname).write_bytes(PNG_MAGIC)
        else:
            fname.write(PNG_MAGIC)
        raise KeyboardInterrupt

    def failed_rename(*args, **kwargs):
        raise OSError("no space left on device")

    if failure == "save":
        monkeypatch.setattr(Figure, "savefig", interrupted_save)
    else:
        monkeypatch.setattr(os, "replace", failed_rename)
        monkeypatch.setattr(Path, "replace", failed_rename)
    import matplotlib.pyplot as plt

    open_figures = plt.get_fignums()
    with pytest.raises((KeyboardInterrupt, OSError)):
        gradcam_figure(_shape_result(), tmp_path / "figures" / "x_shapeqc.png")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no temp, no partial PNG
    assert plt.get_fignums() == open_figures  # the figure is closed too


def test_report_is_self_contained(tmp_path):
    vols = tiny_volumes(tmp_path / "v")
    classic = stage_result("classic", {}, [], [], [], {
        "template_space_t1w": str(vols["t1w_tpl"]), "template": {"file": str(vols["template"])}})
    manifold = stage_result("manifoldqc", {}, [], [], [],
                            {"surrogate_seg": str(vols["surrogate"])})
    res = synthetic_result("sub-06_T1w")
    html = write_participant_report(res, tmp_path, stages=[classic, manifold], qc_input={
        "seg": str(vols["seg"]), "seg_reference": str(vols["t1w_tpl"])}).read_text()
    assert html.count('src="data:image/png;base64,') == 3  # registration, input, surrogate
    assert "ManifoldQC surrogate contours" in html
    assert external_references(html) == []
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert 'id="download-ratings"' in html
    meta = json.loads(re.search(r'id="rating-meta" type="application/json">(.*?)</script>',
                                html).group(1))
    assert meta["bids_name"] == "sub-06_T1w" and meta["format"] == "bids_qc-ratings"


def test_write_results_keeps_internal_keys_out_of_the_json(tmp_path):
    vols = tiny_volumes(tmp_path / "v")
    classic = stage_result("classic", {"reg_cc": 0.5}, [], [], [], {
        "template_space_t1w": str(vols["t1w_tpl"]),
        "template": {"file": str(vols["template"]), "space": "MNI", "sha256": "0" * 64}})
    row = {"bids_name": "sub-07_T1w", "entities": {"subject": "07"}, "reg_source": "fmriprep",
           "sources": {}, "candidates": {}, "seg": str(vols["seg"]), "seg_kind": "aseg",
           "seg_source": "fmriprep", "seg_reference": str(vols["t1w_tpl"])}
    node = WriteResults(qc_input=row, stage_results=[classic], device="cpu",
                        fingerprint={"inputs": {}, "models": {}}, output_dir=str(tmp_path))
    (tmp_path / "work").mkdir()
    node.run(cwd=str(tmp_path / "work"))
    data = json.loads((tmp_path / "sub-07" / "anat" / "sub-07_T1w.json").read_text())
    assert "template_space_t1w" not in data["provenance"]["stages"]["classic"]
    html = (tmp_path / "sub-07_T1w.html").read_text()
    assert html.count('src="data:image/png;base64,') == 2  # registration and segmentation


@pytest.fixture
def contour_calls(monkeypatch):
    """Every ``Axes.contour`` call of the figures: (colours, keyword arguments)."""
    from matplotlib.axes import Axes

    calls = []
    draw = Axes.contour

    def record(self, *args, **kwargs):
        calls.append((list(kwargs.get("colors") or []), kwargs))
        return draw(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "contour", record)
    return calls


def _halo(kwargs) -> list[str]:
    from matplotlib import patheffects

    return [e._gc["foreground"] for e in kwargs["path_effects"]
            if isinstance(e, patheffects.Stroke)]


def test_contours_are_wide_opaque_and_ringed_in_black(tmp_path, contour_calls):
    from bids_qc.reports.figures import structure_colour
    from bids_qc.structures import SUBCORTICAL

    vols = tiny_volumes(tmp_path / "v")
    registration_mosaic(vols["t1w_tpl"], vols["template"])
    segmentation_mosaic(vols["t1w_tpl"], vols["seg"])
    assert len(contour_calls) == 4  # template edges; left thalamus, both hippocampi
    for _, kwargs in contour_calls:
        # 0.7-0.8 pt pale lines vanished on bright T1w; a black halo keeps them on white.
        assert kwargs["linewidths"] >= 1.5 and kwargs["alpha"] == 1.0
        assert _halo(kwargs) == ["black"]
    # Saturated, bright colours only: no pale tints (tab20's have a saturation near 0.3).
    from matplotlib.colors import rgb_to_hsv, to_rgb

    for s in SUBCORTICAL:
        _, saturation, value = rgb_to_hsv(to_rgb(structure_colour(s)))
        assert saturation >= 0.65 and value >= 0.9, s.name


def _speck_outside_the_slices(vols) -> tuple[int, int, int]:
    """A voxel inside the subcortical box that no slice of the default mosaic shows."""
    import nibabel as nib
    import numpy as np

    from bids_qc.reports.figures import Layout
    from bids_qc.structures import SUBCORTICAL

    labels = np.asarray(nib.load(str(vols["seg"])).dataobj)
    sub = np.zeros(labels.shape, dtype=bool)
    for s in SUBCORTICAL:
        sub |= s.mask(labels)
    layout = Layout.around(sub, margin=6)
    assert layout.step == 1
    voxel = []
    for axis, box in enumerate(layout.box):
        n = box.stop - box.start
        shown = set((layout.picks(axis, n) + box.start).tolist())
        lo, hi = np.nonzero(sub.any(axis=tuple(a for a in range(3) if a != axis)))[0][[0, -1]]
        voxel.append(next(i for i in range(lo, hi + 1) if i not in shown))
    return voxel[0], voxel[1], voxel[2]


def test_a_small_failing_structure_is_drawn_highlighted_and_kept_in_the_legend(
        tmp_path, contour_calls):
    import nibabel as nib
    import numpy as np

    from bids_qc.reports.figures import HIGHLIGHT_WIDTH, structure_colour
    from bids_qc.structures import get_structure

    vols = tiny_volumes(tmp_path / "v")
    img = nib.load(str(vols["seg"]))
    labels = np.asarray(img.dataobj).copy()
    labels[_speck_outside_the_slices(vols)] = 13  # a one-voxel left pallidum
    nib.save(nib.Nifti1Image(labels, img.affine), str(vols["seg"]))
    pallidum = structure_colour(get_structure("left_pallidum"))

    plain = segmentation_mosaic(vols["t1w_tpl"], vols["seg"])
    item = next(i for i in plain.legend if i.name == "left pallidum")
    assert item.note == "not in these slices" and not item.failing
    assert [pallidum] not in [c for c, _ in contour_calls]

    contour_calls.clear()
    failed = segmentation_mosaic(vols["t1w_tpl"], vols["seg"],
                                 failing=["left_pallidum", "left_amygdala"])
    first, second = failed.legend[:2]
    assert (first.name, first.failing, first.note) == ("left pallidum", True, "")
    assert (second.name, second.failing) == ("left amygdala", True)
    assert second.note == "not in this segmentation"
    assert not any(i.failing for i in failed.legend[2:])
    drawn = {c[0]: kwargs for c, kwargs in contour_calls}
    assert drawn[pallidum]["linewidths"] == HIGHLIGHT_WIDTH
    assert _halo(drawn[pallidum]) == ["white", "black"]
    assert all(k["linewidths"] < HIGHLIGHT_WIDTH for c, k in drawn.items() if c != pallidum)


def test_participant_report_highlights_the_failing_structures(tmp_path):
    from bids_qc.reports.checks import evaluate
    from bids_qc.reports.participant import failing_structures

    # SegQC fails only the left hippocampus (0.67 < 0.7); ShapeQC flags the left putamen.
    res = synthetic_result("sub-08_T1w", dice=0.72, pfail=0.1)
    assert failing_structures(res["metrics"], evaluate(res)) == ["left_hippocampus",
                                                                 "left_putamen"]
    vols = tiny_volumes(tmp_path / "v")
    html = write_participant_report(res, tmp_path, qc_input={
        "seg": str(vols["seg"]), "seg_reference": str(vols["t1w_tpl"])}).read_text()
    failing = re.findall(r'<span class="failing"[^>]*><i[^>]*></i>([^<]*)', html)
    assert sorted(f.strip() for f in failing) == ["left hippocampus (failed)",
                                                  "left putamen (failed)"]
    assert "not in this segmentation" in html  # the tiny segmentation has no putamen


def _group_of(tmp_path, n: int, outlier: bool = True) -> list[dict]:
    """``n`` FreeSurfer-like results written as JSONs with their participant-level reports;
    with ``outlier``, sub-20 has a half-size hippocampus."""
    from bids_qc.results import assemble

    results = []
    for i in range(n):
        hippo = 2000.0 if outlier and i == n - 1 else 4000.0 + 10 * i
        row = {"bids_name": f"sub-{i:02d}_T1w", "entities": {"subject": f"{i:02d}"},
               "reg_source": None, "seg_source": "freesurfer", "seg_kind": "aseg",
               "sources": {}, "candidates": {}}
        metrics = {"vol_left_hippocampus": hippo, "vol_whole_brain": 1.2e6 + 1e3 * (i % 4),
                   "etiv_mm3": 1.5e6 + 2e3 * (i % 5), "reg_cc": 0.9 + 0.001 * i}
        res = assemble(row, [stage_result("classic", metrics, [], [], [])],
                       {"inputs": {}, "models": {}}, "cpu")
        path = tmp_path / f"sub-{i:02d}" / "anat" / f"{res['bids_name']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res))
        write_participant_report(res, tmp_path)
        results.append(res)
    return results


def _section(html: str) -> str:
    from bids_qc.reports.relative import END, START

    return html[html.index(START):html.index(END) + len(END)]


def test_participant_level_report_says_the_group_level_adds_the_strips(tmp_path):
    html = write_participant_report(synthetic_result("sub-01_T1w"), tmp_path).read_text()
    section = _section(html)
    assert 'id="relative-note"' in section and "once the group level has run" in section
    assert 'class="strip"' not in section


def test_group_level_draws_where_each_image_stands(tmp_path):
    from bids_qc.group import write_group_outputs
    from bids_qc.reports.relative import END, START

    _group_of(tmp_path, 15)
    before = (tmp_path / "sub-14_T1w.html").read_text()
    _, _, frame, _ = write_group_outputs(tmp_path)
    after = (tmp_path / "sub-14_T1w.html").read_text()
    # only the section changed: the figures drawn at participant level stay
    assert before[:before.index(START)] == after[:after.index(START)]
    assert before[before.index(END):] == after[after.index(END):]
    section = _section(after)
    rows = {name: cls for cls, name in re.findall(
        r"<tr( class=\"rz-outlier\")?><td><code>(\w+)</code>", section)}
    z = frame.set_index("bids_name").loc["sub-14_T1w"]
    from bids_qc.schema import RZ_COLUMNS

    scored = {m for m, col in RZ_COLUMNS.items() if z[col] == z[col]}  # not NaN
    assert scored == {"vol_left_hippocampus", "vol_whole_brain", "etiv_mm3", "reg_cc"}
    assert set(rows) == scored
    hippo = re.search(r'<tr class="rz-outlier"><td><code>vol_left_hippocampus</code>.*?</tr>',
                      section, re.S).group(0)
    # the z shown is the group table's, highlighted, and the mark is red: a triangle at the
    # left edge (beyond the axis) or a dot where z falls
    shown = re.search(r'<td class="num flag">([-+][\d.]+)</td>', hippo).group(1)
    assert float(shown) == pytest.approx(z["rz_vol_left_hippocampus"], abs=0.05)
    assert z["rz_vol_left_hippocampus"] < -3.5
    mark = re.search(r'<i class="([\w ]+)" style="left:([\d.]+)px">', hippo)
    assert mark.group(1).split()[0] == "out" and "% of ICV" in hippo
    beyond = z["rz_vol_left_hippocampus"] < -6
    assert ("lo" in mark.group(1).split()) == beyond
    assert float(mark.group(2)) == pytest.approx(
        0 if beyond else 90 + 15 * z["rz_vol_left_hippocampus"], abs=0.1)
    # an image that stands in the middle: no highlight, a blue mark near the median line
    middle = _section((tmp_path / "sub-05_T1w.html").read_text())
    assert "rz-outlier" not in middle and 'class="num flag"' not in middle
    assert '<i class="in" style="left:' in middle and 'class="strip"' in middle
    # rerunning the group level leaves the same section (no duplicate, no drift)
    write_group_outputs(tmp_path)
    again = (tmp_path / "sub-14_T1w.html").read_text()
    assert again == after and again.count(START) == 1


def test_small_dataset_reports_say_strips_need_ten_images(tmp_path):
    from bids_qc.group import write_group_outputs

    _group_of(tmp_path, 4)
    (tmp_path / "sub-02_T1w.html").unlink()  # rendered by the group level, with the note
    write_group_outputs(tmp_path)
    for i in (1, 2):
        section = _section((tmp_path / f"sub-0{i}_T1w.html").read_text())
        assert 'id="relative-note"' in section and "The dataset has 4 image(s)" in section
        assert 'class="strip"' not in section
