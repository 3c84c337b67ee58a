"""Per-vertex shape features of one subcortical structure on a 128x128 spherical map.

The steps, for one structure of a FreeSurfer-coded label volume (world mm throughout):

1. **Mesh.** The binary mask, blurred lightly (Gaussian, 0.5 voxel), is meshed by marching
   cubes at level 0.5 and mapped to world mm by the affine, then smoothed by a few Taubin
   (lambda/mu) steps, which smooth without shrinking. Left structures are mirrored
   (``x -> -x``), so both hemispheres share one model.
2. **Medial curve.** The principal axis ``e1`` of the mask's voxel centres (its sign points
   along a per-structure reference axis when one is given, so the poles keep their anatomical
   ends; without one, along the positive skewness of the voxels along the axis). Voxels are
   binned in 16 slabs across ``e1``; the curve is a weighted cubic fit of the slab centroids'
   in-plane offsets as a function of the position ``t`` along ``e1``. Cross-sections are the
   planes perpendicular to ``e1``, so the in-plane frame ``(e2, e3)`` is carried along the
   curve unchanged (a trivially parallel-transported frame for a curve graphed over ``e1``).
3. **Thickness** ``D(p)``: the distance of vertex ``p`` to the curve within its
   cross-section, i.e. ``|p - c(t_p)|`` measured in the plane of ``t_p``.
4. **Spherical coordinates.** Latitude ``theta = arccos(1 - 2 s)`` with ``s`` the position
   of ``t_p`` between the two ends of the mesh along ``e1`` (poles at the curve's ends; a
   sphere gets its usual latitude, and equal steps of ``s`` hold equal area of a sphere);
   longitude ``phi`` is the angle of ``p - c(t_p)`` in the ``(e2, e3)`` frame, rotated so
   that the thickest direction of the thickness profile (``D`` over all latitudes) lies at
   ``phi = 0`` (rotational standardisation: the axis of the profile's second circular
   harmonic, the end picked by its first harmonic; see :func:`standard_phase`).
5. **Area change** ``LogJac``: vertex areas are accumulated on the map and divided by the
   cells' solid angle (both Gaussian-smoothed on the sphere grid), giving the local area
   density ``rho(theta, phi)`` in mm^2 per steradian. With the structure's template (the mean
   of good training shapes' ``log(rho / A)`` with ``A`` the total area, and their mean
   ``log A``), ``LogJac = log rho - template``: the log of the local area change relative to
   the template at the same spherical coordinate.
6. **Volume normalisation** (as in the paper, features that do not scale with head size):
   ``D / V^(1/3)`` and ``LogJac`` minus the log of the total-area ratio.

7. **Whole-shape scalars** (:data:`SCALARS`): what one sphere map cannot show, such as an
   inner cavity (a second mesh component), a split or a detached piece, plus global size
   and elongation.

The four maps ``[D, D / V^(1/3), LogJac, LogJac_norm]`` are sampled on an equiangular
128x128 grid (rows: latitude, columns: longitude) by inverse-distance weighting of the
nearest vertices on the unit sphere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.spatial import cKDTree

from bids_qc.structures import get_structure

#: Map size (latitude rows x longitude columns).
GRID = 128
#: Channels of a feature map.
CHANNELS: tuple[str, ...] = ("thickness_mm", "thickness_norm", "logjac", "logjac_norm")
#: Slabs across the principal axis for the medial curve.
N_SLABS = 16
#: Smoothing of the area density on the map (cells).
DENSITY_SIGMA = 3.0
#: Whole-shape scalars beside the maps (topology and global size/shape, which a map drawn
#: from one sphere cannot show: an inner cavity, a split, a detached piece).
SCALARS: tuple[str, ...] = (
    "log_volume", "log_area", "log_area_per_volume23", "extra_mesh_components", "genus",
    "extra_mask_components", "largest_component_area_share", "elongation_2", "elongation_3",
)


@dataclass
class ShapeTemplate:
    """The template of one structure kind (mirrored into the right hemisphere's frame).

    Attributes
    ----------
    log_density : ndarray (GRID, GRID)
        Mean of ``log(rho / A)`` over good training shapes.
    log_area : float
        Mean ``log A`` (total area, mm^2).
    axis : ndarray (3,) or None
        Reference direction for the sign of the principal axis (world mm, mirrored frame).
    """

    log_density: np.ndarray
    log_area: float
    axis: np.ndarray | None = None


@dataclass
class ShapeFeatures:
    """The mesh, per-vertex coordinates and features, and the maps of one structure.

    Attributes
    ----------
    vertices : ndarray (N, 3)
        World mm (mirrored for left structures).
    faces : ndarray (M, 3)
    theta, phi : ndarray (N,)
        Latitude in ``[0, pi]`` and longitude in ``[0, 2 pi)`` of every vertex.
    thickness : ndarray (N,)
        ``D(p)``, mm.
    maps : ndarray (4, GRID, GRID) float32
        ``[D, D / V^(1/3), LogJac, LogJac_norm]`` (LogJac channels zero without template).
    log_density : ndarray (GRID, GRID)
        ``log(rho / A)``, for building templates.
    log_area : float
        ``log A``.
    volume_mm3 : float
    axis : ndarray (3,)
        The principal axis used (signed).
    scalars : ndarray (len(SCALARS),)
        Whole-shape scalars, see :data:`SCALARS`.
    """

    vertices: np.ndarray
    faces: np.ndarray
    theta: np.ndarray
    phi: np.ndarray
    thickness: np.ndarray
    maps: np.ndarray
    log_density: np.ndarray
    log_area: float
    volume_mm3: float
    axis: np.ndarray
    scalars: np.ndarray

    def vertex_values(self, grid_map: np.ndarray) -> np.ndarray:
        """A ``(GRID, GRID)`` map sampled at every vertex (bilinear, longitude wraps)."""
        return sample_map(grid_map, self.theta, self.phi)


def _taubin(verts: np.ndarray, faces: np.ndarray, steps: int, lam: float = 0.5,
            mu: float = -0.53) -> np.ndarray:
    """Taubin smoothing with the uniform Laplacian (smooths without shrinking)."""
    n = len(verts)
    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2],
                        faces[:, 0]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1],
                        faces[:, 2]])
    adj = sparse.csr_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    adj.data[:] = 1.0
    deg = np.asarray(adj.sum(axis=1)).ravel()
    deg[deg == 0] = 1.0
    avg = sparse.diags(1.0 / deg) @ adj
    v = verts.copy()
    for _ in range(steps):
        v = v + lam * (avg @ v - v)
        v = v + mu * (avg @ v - v)
    return v


def mask_mesh(mask: np.ndarray, affine: np.ndarray, *, mirror: bool = False,
              smooth_steps: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes mesh of a binary mask in world mm (Taubin-smoothed).

    Raises
    ------
    ValueError
        If the mask is empty or too small to mesh.
    """
    from skimage.measure import marching_cubes

    idx = np.argwhere(mask)
    if len(idx) < 8:
        raise ValueError(f"structure has {len(idx)} voxel(s); too small to mesh")
    lo = np.maximum(idx.min(axis=0) - 3, 0)
    hi = np.minimum(idx.max(axis=0) + 4, mask.shape)
    crop = np.zeros(tuple(hi - lo + 2), dtype=np.float32)
    crop[1:-1, 1:-1, 1:-1] = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    crop = ndi.gaussian_filter(crop, 0.5)
    verts, faces, _, _ = marching_cubes(crop, 0.5)
    verts = verts + lo - 1
    world = verts @ affine[:3, :3].T + affine[:3, 3]
    if mirror:
        world[:, 0] = -world[:, 0]
    return _taubin(world, faces.astype(np.int64), smooth_steps), faces.astype(np.int64)


def vertex_areas(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """A third of the area of every triangle around each vertex (mm^2)."""
    tri = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    out = np.zeros(len(verts))
    for k in range(3):
        np.add.at(out, faces[:, k], area / 3)
    return out


def shape_scalars(verts: np.ndarray, faces: np.ndarray, areas: np.ndarray, mask: np.ndarray,
                  volume: float, local_vox: np.ndarray) -> np.ndarray:
    """The :data:`SCALARS` of one shape."""
    from scipy.sparse.csgraph import connected_components

    n = len(verts)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    graph = sparse.csr_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    n_comp, which = connected_components(graph, directed=False)
    euler = n - len(edges) + len(faces)
    genus = max(0.0, (2 * n_comp - euler) / 2)
    comp_area = np.bincount(which, areas, n_comp)
    _, n_mask = ndi.label(mask)
    total = float(areas.sum())
    var = np.sort(local_vox.var(axis=0))[::-1] + 1e-6
    return np.array([np.log(volume), np.log(total), np.log(total / volume ** (2 / 3)),
                     n_comp - 1, genus, n_mask - 1, comp_area.max() / total,
                     np.sqrt(var[1] / var[0]), np.sqrt(var[2] / var[0])])


def _grid_centres() -> tuple[np.ndarray, np.ndarray]:
    theta = (np.arange(GRID) + 0.5) * np.pi / GRID
    phi = (np.arange(GRID) + 0.5) * 2 * np.pi / GRID
    return theta, phi


def _unit(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi),
                     np.cos(theta)], axis=-1)


def sample_map(grid_map: np.ndarray, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Bilinear samples of a ``(GRID, GRID)`` map at ``(theta, phi)`` (longitude wraps)."""
    rows = np.clip(np.asarray(theta) * GRID / np.pi - 0.5, 0, GRID - 1)
    cols = (np.asarray(phi) * GRID / (2 * np.pi) - 0.5) % GRID
    padded = np.concatenate([grid_map, grid_map[:, :1]], axis=1)  # wrap column GRID -> 0
    return ndi.map_coordinates(padded, [rows, cols], order=1, mode="nearest")


def _to_grid(theta: np.ndarray, phi: np.ndarray, values: np.ndarray, k: int = 6) -> np.ndarray:
    """Inverse-distance weighting of vertex values onto the map (nearest vertices)."""
    tree = cKDTree(_unit(theta, phi))
    gt, gp = _grid_centres()
    tt, pp = np.meshgrid(gt, gp, indexing="ij")
    dist, idx = tree.query(_unit(tt.ravel(), pp.ravel()), k=min(k, len(theta)))
    w = 1.0 / np.maximum(dist, 1e-4) ** 2
    return ((values[idx] * w).sum(axis=1) / w.sum(axis=1)).reshape(GRID, GRID)


def _smooth(grid_map: np.ndarray, sigma: float = DENSITY_SIGMA) -> np.ndarray:
    return ndi.gaussian_filter(grid_map, sigma, mode=("nearest", "wrap"))


def area_density(theta: np.ndarray, phi: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Smoothed surface area per steradian on the map (mm^2 / sr)."""
    rows = np.clip((theta * GRID / np.pi).astype(int), 0, GRID - 1)
    cols = np.clip((phi * GRID / (2 * np.pi)).astype(int), 0, GRID - 1)
    hist = np.zeros((GRID, GRID))
    np.add.at(hist, (rows, cols), areas)
    gt, _ = _grid_centres()
    solid = np.repeat((np.sin(gt) * (np.pi / GRID) * (2 * np.pi / GRID))[:, None], GRID, axis=1)
    dens = _smooth(hist) / _smooth(solid)
    return np.maximum(dens, 1e-3 * areas.sum() / (4 * np.pi))


def principal_frame(points: np.ndarray, reference: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Centre and right-handed principal frame (rows e1, e2, e3) of a point cloud."""
    centre = points.mean(axis=0)
    x = points - centre
    _, vecs = np.linalg.eigh(x.T @ x)
    e1, e2 = vecs[:, 2], vecs[:, 1]
    if reference is not None:
        flip = float(e1 @ reference) < 0
    else:
        flip = float(((x @ e1) ** 3).mean()) < 0
    if flip:
        e1 = -e1
    return centre, np.stack([e1, e2, np.cross(e1, e2)])


def medial_curve(t: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Cubic fits ``u(t), v(t)`` through the slab centroids of points ``(t, u, v)``.

    Returns the coefficients of ``u`` and ``v`` (``numpy.polyval`` order) and the range of t.
    """
    lo, hi = float(t.min()), float(t.max())
    edges = np.linspace(lo, hi + 1e-9, N_SLABS + 1)
    which = np.clip(np.digitize(t, edges) - 1, 0, N_SLABS - 1)
    counts = np.bincount(which, minlength=N_SLABS)
    keep = counts > 0
    ct = np.bincount(which, t, N_SLABS)[keep] / counts[keep]
    cu = np.bincount(which, uv[:, 0], N_SLABS)[keep] / counts[keep]
    cv = np.bincount(which, uv[:, 1], N_SLABS)[keep] / counts[keep]
    deg = int(min(3, keep.sum() - 1))
    w = np.sqrt(counts[keep])
    return np.polyfit(ct, cu, deg, w=w), np.polyfit(ct, cv, deg, w=w), lo, hi


def standard_phase(weight: np.ndarray, phi: np.ndarray) -> float:
    """The longitude set to 0 by rotational standardisation of a thickness profile.

    The axis of the profile's second circular harmonic (the long axis of the cross-sections)
    is the thickest direction up to a half turn; the first harmonic picks which end.
    """
    c1 = np.sum(weight * np.exp(1j * phi))
    axis = float(np.angle(np.sum(weight * np.exp(2j * phi)))) / 2
    if np.cos(axis - float(np.angle(c1))) < 0:
        axis += np.pi
    return axis


def structure_features(labels: np.ndarray, affine: np.ndarray, structure: str,
                       template: ShapeTemplate | None = None) -> ShapeFeatures:
    """Mesh, features and 4-channel map of one structure of a FreeSurfer-coded volume.

    Parameters
    ----------
    labels : ndarray
        3-D integer label volume.
    affine : ndarray (4, 4)
        Voxel-to-world matrix (mm).
    structure : str
        One of the 14 subcortical structures (``left_hippocampus``).
    template : ShapeTemplate, optional
        The structure kind's template; without it the LogJac channels are zero.

    Raises
    ------
    ValueError
        If the structure is absent or too small to mesh.
    """
    s = get_structure(structure)
    mask = s.mask(labels)
    mirror = structure.startswith("left_")
    verts, faces = mask_mesh(mask, affine, mirror=mirror)
    vox = np.argwhere(mask).astype(np.float64) @ affine[:3, :3].T + affine[:3, 3]
    if mirror:
        vox[:, 0] = -vox[:, 0]
    volume = float(len(vox) * abs(np.linalg.det(affine[:3, :3])))
    centre, frame = principal_frame(vox, None if template is None else template.axis)
    local_vox = (vox - centre) @ frame.T
    pu, pv, _, _ = medial_curve(local_vox[:, 0], local_vox[:, 1:])
    local = (verts - centre) @ frame.T
    t = local[:, 0]
    a = local[:, 1] - np.polyval(pu, t)
    b = local[:, 2] - np.polyval(pv, t)
    thickness = np.hypot(a, b)
    s_pos = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    theta = np.arccos(np.clip(1 - 2 * s_pos, -1, 1))
    phi = np.arctan2(b, a)
    phi = (phi - standard_phase(thickness * np.sin(theta), phi)) % (2 * np.pi)
    areas = vertex_areas(verts, faces)
    total = float(areas.sum())
    log_dn = np.log(area_density(theta, phi, areas) / total)
    d_map = _to_grid(theta, phi, thickness)
    lj, lj_norm = logjac_maps(log_dn, float(np.log(total)), template)
    maps = np.stack([d_map, d_map / volume ** (1 / 3), lj, lj_norm]).astype(np.float32)
    lo, hi = np.argwhere(mask).min(axis=0), np.argwhere(mask).max(axis=0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    scalars = shape_scalars(verts, faces, areas, mask[box], volume, local_vox)
    return ShapeFeatures(verts, faces, theta, phi, thickness, maps, log_dn, float(np.log(total)),
                         volume, frame[0], scalars)


def logjac_maps(log_density: np.ndarray, log_area: float, template: ShapeTemplate | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """``LogJac`` and its volume-normalised version against a template (zeros without one)."""
    if template is None:
        zero = np.zeros_like(log_density)
        return zero, zero
    lj_norm = log_density - template.log_density
    return lj_norm + log_area - template.log_area, lj_norm


def build_template(log_densities: list[np.ndarray], log_areas: list[float],
                   axes: list[np.ndarray]) -> ShapeTemplate:
    """The template of one structure kind from good shapes' maps and principal axes."""
    if not log_densities:
        raise ValueError("a template needs at least one shape")
    axis = np.asarray(axes, dtype=np.float64)
    # Axes are sign-ambiguous: align them to the first before averaging.
    axis = axis * np.sign(axis @ axis[0])[:, None]
    mean_axis = axis.mean(axis=0)
    return ShapeTemplate(np.mean(log_densities, axis=0), float(np.mean(log_areas)),
                         mean_axis / np.linalg.norm(mean_axis))
