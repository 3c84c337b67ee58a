"""ShapeQC figures: a structure's spherical map with its Grad-CAM, and its mesh coloured by
the Grad-CAM projected on the vertices (matplotlib, Agg; small PNGs)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Most triangles drawn in a mesh rendering (a random subset beyond; keeps it fast).
MAX_FACES = 10000


def _faces_for_render(faces: np.ndarray) -> np.ndarray:
    if len(faces) <= MAX_FACES:
        return faces
    keep = np.random.default_rng(0).choice(len(faces), MAX_FACES, replace=False)
    return faces[np.sort(keep)]


def gradcam_figure(result, path: str | Path, title: str | None = None) -> Path:
    """Write a 2-panel PNG: thickness map + heat map, and the mesh coloured by the heat.

    The PNG is rendered in memory and written atomically: a failed or interrupted run
    leaves neither a temp file nor a partial PNG, and the figure is closed either way.

    Parameters
    ----------
    result : bids_qc.models.shapeqc.StructureResult
    path : path of the PNG
    title : str, optional
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(5.6, 2.6), dpi=80)
    buffer = io.BytesIO()
    try:
        _draw_gradcam(fig, result, title)
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _draw_gradcam(fig: Figure, result, title: str | None) -> None:
    """Draw :func:`gradcam_figure`'s two panels and title into ``fig``."""
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    f = result.features
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(f.maps[0], cmap="gray", extent=(0, 360, 180, 0), aspect="auto")
    ax.imshow(result.heat, cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=(0, 360, 180, 0),
              aspect="auto")
    ax.set_xlabel("longitude (deg)", fontsize=7)
    ax.set_ylabel("latitude (deg)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title("thickness map + Grad-CAM", fontsize=7)
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    faces = _faces_for_render(f.faces)
    heat = result.vertex_heat[faces].mean(axis=1)
    tris = f.vertices[faces]
    coll = Poly3DCollection(tris, facecolors=plt.get_cmap("jet")(np.clip(heat, 0, 1)),
                            edgecolor="none")
    ax3.add_collection3d(coll)
    lo, hi = f.vertices.min(axis=0), f.vertices.max(axis=0)
    mid, half = (lo + hi) / 2, float((hi - lo).max()) / 2
    for setter, m in zip((ax3.set_xlim, ax3.set_ylim, ax3.set_zlim), mid):
        setter(m - half, m + half)
    ax3.set_box_aspect((1, 1, 1), zoom=1.35)
    ax3.set_axis_off()
    ax3.set_title("mesh, Grad-CAM", fontsize=7)
    fig.suptitle(title or f"{result.structure}: P(FAIL) {result.pfail:.2f}", fontsize=8)
    fig.tight_layout()
