"""Report figures: small mosaics drawn with matplotlib (Agg), embedded as PNG data URIs.

A mosaic is 3 rows (sagittal, coronal, axial) of 6 slices, tiled into one array and drawn
on a single axes (one ``imshow`` and one contour set per overlay: far faster than 18
subplots). A figure that cannot be drawn never fails the image: :func:`safe_figure` turns
the exception into a note shown in the report instead.
"""

from __future__ import annotations

import base64
import io
import math
import os
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..structures import SUBCORTICAL, Structure

#: Slices per row, and the longest side (in voxels) of one tile after downsampling.
N_SLICES = 6
MAX_TILE = 96
#: Colours of the PNG palette.
PNG_COLOURS = 128
#: Embedded images (Grad-CAM renderings) larger than this are left out with a note.
MAX_EMBED_BYTES = 4 * 1024 * 1024
_MIME = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}


#: Contours: wide enough, opaque, and ringed in black (:data:`HALO_WIDTH` more) so that
#: they stand out on bright T1w tissue as well as on the dark background.
CONTOUR_WIDTH = 1.6
HIGHLIGHT_WIDTH = 3.2
HALO_WIDTH = 1.6
CONTOUR_ALPHA = 1.0
#: One saturated hue per structure kind (left and right share it; the legend names both):
#: matplotlib's tab20 alternates with pale tints that vanish on white matter.
KIND_COLOURS = {
    "thalamus": "#00e5ff",
    "caudate": "#ffd400",
    "putamen": "#ff3df5",
    "pallidum": "#3dff5a",
    "hippocampus": "#ff8a00",
    "amygdala": "#4d8bff",
    "accumbens": "#ff2a2a",
}


@dataclass(frozen=True)
class LegendItem:
    """One legend entry: what a colour shows, whether it failed, and a note (e.g. where)."""

    name: str
    colour: str
    failing: bool = False
    note: str = ""


@dataclass
class Figure:
    """A drawn figure (``uri``) or the note saying why there is none."""

    title: str
    uri: str | None = None
    note: str | None = None
    legend: list[LegendItem] = field(default_factory=list)


def safe_figure(label: str, draw: Callable[..., Figure], /, *args: Any,
                **kwargs: Any) -> Figure:
    """``draw(*args, **kwargs)``, or a Figure (titled ``label``) whose note says why it failed."""
    try:
        return draw(*args, **kwargs)
    except Exception as exc:  # a figure must never fail the image
        return Figure(label, note=f"could not draw this figure ({type(exc).__name__}: {exc})")


def _matplotlib() -> Any:
    """Import matplotlib with the Agg backend and a writable config dir."""
    if "MPLCONFIGDIR" not in os.environ and not os.access(Path.home(), os.W_OK):
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="bids_qc_mpl_")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure as MplFigure

    return MplFigure


def _load_ras(path: str | Path, dtype: type = np.float32) -> np.ndarray:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asanyarray(img.dataobj)
    if data.ndim > 3:
        data = data.reshape(data.shape[:3] + (-1,))[..., 0]
    return np.asarray(data, dtype=dtype)


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice]:
    idx = np.nonzero(mask)
    if not idx[0].size:
        return tuple(slice(0, n) for n in mask.shape)  # type: ignore[return-value]
    return tuple(
        slice(max(0, int(i.min()) - margin), min(n, int(i.max()) + margin + 1))
        for i, n in zip(idx, mask.shape, strict=True)
    )  # type: ignore[return-value]


@dataclass(frozen=True)
class Layout:
    """Which slices a mosaic shows: a crop box and a downsampling step."""

    box: tuple[slice, slice, slice]
    step: int
    #: Full-grid slice indices (one per axis) that the mosaic must show, or None.
    through: tuple[int, int, int] | None = None

    @classmethod
    def around(cls, mask: np.ndarray, margin: int = 4,
               through: tuple[int, int, int] | None = None) -> Layout:
        box = _bbox(mask, margin)
        longest = max(s.stop - s.start for s in box)
        return cls(box, max(1, math.ceil(longest / MAX_TILE)), through)

    def picks(self, axis: int, n: int) -> np.ndarray:
        """The N_SLICES slices of ``axis`` (of ``n`` after cropping and downsampling)."""
        picks = np.linspace(0, n - 1, N_SLICES + 2)[1:-1].round().astype(int)
        if self.through is not None:
            # Even spacing can step over a small structure: the nearest pick moves onto it.
            want = round((self.through[axis] - self.box[axis].start) / self.step)
            want = int(np.clip(want, 0, n - 1))
            if want not in picks:
                picks[np.argmin(np.abs(picks - want))] = want
                picks.sort()
        return picks

    def tile(self, volume: np.ndarray) -> np.ndarray:
        """The mosaic of ``volume``: 3 rows (sagittal, coronal, axial) of N_SLICES slices."""
        crop = volume[self.box][:: self.step, :: self.step, :: self.step]
        rows = []
        for axis in range(3):
            picks = self.picks(axis, crop.shape[axis])
            # Superior (or anterior, for axial) up: RAS array slices transposed and flipped.
            rows.append([np.flipud(np.take(crop, k, axis=axis).T) for k in picks])
        height = max(t.shape[0] for row in rows for t in row)
        width = max(t.shape[1] for row in rows for t in row)
        out = np.zeros((3 * height, N_SLICES * width), dtype=crop.dtype)
        for r, row in enumerate(rows):
            for c, t in enumerate(row):
                y = r * height + (height - t.shape[0]) // 2
                x = c * width + (width - t.shape[1]) // 2
                out[y : y + t.shape[0], x : x + t.shape[1]] = t
        return out


def _canvas(shape: tuple[int, int], scale: float) -> tuple[Any, Any]:
    mpl_figure = _matplotlib()
    h, w = shape
    fig = mpl_figure(figsize=(w * scale / 100, h * scale / 100), dpi=100, facecolor="black")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    return fig, ax


def _show_gray(ax: Any, image: np.ndarray) -> None:
    inside = image[image > 0]
    vmax = float(np.percentile(inside, 99.5)) if inside.size else 1.0
    ax.imshow(
        image, cmap="gray", vmin=0, vmax=vmax or 1.0, interpolation="nearest", aspect="equal"
    )


def _png_uri(fig: Any) -> str:
    """The figure as a palette PNG data URI (128 colours: 3x smaller, same look)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image  # a dependency of matplotlib

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    buf = io.BytesIO()
    Image.fromarray(rgb).quantize(colors=PNG_COLOURS).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def registration_mosaic(t1w_template_space: str | Path, template: str | Path) -> Figure:
    """The template-space T1w with the template's edges (two intensity contours) overlaid."""
    title = "Template-space T1w, template edges overlaid"
    image = _load_ras(t1w_template_space)
    tpl = _load_ras(template)
    if image.shape != tpl.shape:
        return Figure(
            title,
            note=f"the template-space T1w {image.shape} and the template "
            f"{tpl.shape} are not on one grid",
        )
    layout = Layout.around(tpl > 0, margin=2)
    tiled, tiled_tpl = layout.tile(image), layout.tile(tpl)
    fig, ax = _canvas(tiled.shape, scale=1.5)
    _show_gray(ax, tiled)
    brain = tpl[tpl > 0]
    levels = sorted({float(np.percentile(brain, 5)), float(np.percentile(brain, 60))})
    colours = ["#ff3030", "#00d0ff"]
    ax.contour(tiled_tpl, levels=levels, colors=colours[: len(levels)],
               **contour_style())
    return Figure(
        title,
        uri=_png_uri(fig),
        legend=[LegendItem("template brain outline", colours[0]),
                LegendItem("template grey/white edge", colours[1])],
    )


def contour_style(width: float = CONTOUR_WIDTH, failing: bool = False) -> dict[str, Any]:
    """``contour`` keyword arguments: an opaque line of ``width`` ringed by a black halo.

    Parameters
    ----------
    width : float
        The coloured line's width (points).
    failing : bool
        Ring the halo in white as well: a failing structure stands out from its neighbours
        (dimming those instead would turn their colours muddy on grey tissue).

    Returns
    -------
    dict
        ``linewidths``, ``alpha`` and ``path_effects`` for ``Axes.contour``.
    """
    from matplotlib import patheffects

    effects = [patheffects.Stroke(linewidth=width + HALO_WIDTH, foreground="black"),
               patheffects.Normal()]
    if failing:
        effects.insert(0, patheffects.Stroke(linewidth=width + 2.5 * HALO_WIDTH,
                                             foreground="white"))
    return {"linewidths": width, "alpha": CONTOUR_ALPHA, "path_effects": effects}


def structure_colour(structure: Structure) -> str:
    """The contour colour of a subcortical structure (its kind's hue)."""
    kind = structure.name.removeprefix("left_").removeprefix("right_")
    return KIND_COLOURS.get(kind, "#ffffff")


def _busiest_slices(mask: np.ndarray) -> tuple[int, int, int]:
    """Per axis, the slice holding most of ``mask`` (so a small structure is in the mosaic)."""
    out = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        out.append(int(np.argmax(mask.sum(axis=others))))
    return out[0], out[1], out[2]


def segmentation_mosaic(
    image: str | Path | None,
    seg: str | Path,
    title: str = "Segmentation contours over the T1w",
    layout_from: str | Path | None = None,
    failing: Collection[str] = (),
) -> Figure:
    """Subcortical contours of ``seg`` over ``image``, around the subcortical structures.

    Parameters
    ----------
    image : str or Path or None
        The T1w on the segmentation's grid (None: contours over the label mask).
    seg : str or Path
        A FreeSurfer-coded segmentation.
    title : str
        The figure's title.
    layout_from : str or Path, optional
        Another segmentation on the same grid that fixes the slices, so that a surrogate's
        mosaic shows the same slices as the input's.
    failing : collection of str
        Structures a check failed: drawn thicker and ringed in white, listed first in the
        legend, and shown in every row of the mosaic, however small.

    Returns
    -------
    Figure
        The mosaic, and a legend of every subcortical structure in ``seg`` (and of every
        failing one, with a note when the mosaic cannot show it).
    """
    labels = _load_ras(seg, dtype=np.int32)
    base = _load_ras(image) if image is not None else None
    note = None
    if base is not None and base.shape != labels.shape:
        base, note = None, "the T1w is not on the segmentation's grid: contours alone"
    ref = labels if layout_from is None else _load_ras(layout_from, dtype=np.int32)
    if ref.shape != labels.shape:
        raise ValueError(f"{seg} and {layout_from} are not on one grid")
    failing = set(failing)
    sub = np.zeros(ref.shape, dtype=bool)
    bad = np.zeros(ref.shape, dtype=bool)
    for s in SUBCORTICAL:
        mask = s.mask(ref)
        sub |= mask
        if s.name in failing:
            bad |= mask
    if not bad.any():  # the layout's segmentation lacks it: this one may have it
        for s in SUBCORTICAL:
            if s.name in failing:
                bad |= s.mask(labels)
    through = _busiest_slices(bad) if bad.any() else None
    layout = Layout.around(sub if sub.any() else ref > 0, margin=6, through=through)
    tiled_labels = layout.tile(labels)
    tiled = layout.tile(base) if base is not None else (tiled_labels > 0).astype(np.float32)
    fig, ax = _canvas(tiled.shape, scale=max(1.0, 900 / tiled.shape[1]))
    _show_gray(ax, tiled)
    first, rest = [], []
    for s in SUBCORTICAL:
        colour, is_bad = structure_colour(s), s.name in failing
        name = s.name.replace("_", " ")
        mask = s.mask(tiled_labels)
        if mask.any():
            style = contour_style(HIGHLIGHT_WIDTH, failing=True) if is_bad else contour_style()
            # Failing structures on top of their neighbours.
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour],
                       zorder=3 if is_bad else 2, **style)
            item_note = ""
        elif s.mask(labels).any():
            item_note = "not in these slices"
        elif is_bad:
            item_note = "not in this segmentation"
        else:
            continue
        (first if is_bad else rest).append(LegendItem(name, colour, is_bad, item_note))
    return Figure(title, uri=_png_uri(fig), note=note, legend=first + rest)


def embed_file(path: str | Path, title: str, base_dir: Path | None = None) -> Figure:
    """An image file (PNG, SVG, JPEG) as a data URI, for an ``<img>`` (scripts never run)."""
    p = Path(path)
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    mime = _MIME.get(p.suffix.lower())
    if mime is None:
        return Figure(title, note=f"{p.name}: not an image type a report can embed")
    size = p.stat().st_size
    if size > MAX_EMBED_BYTES:
        return Figure(title, note=f"{p.name} is {size / 2**20:.1f} MiB, too large to embed")
    return Figure(title, uri=f"data:{mime};base64," + base64.b64encode(p.read_bytes()).decode())
