"""MNI152 anatomy (the copy bundled with nilearn) on the OpenBHB grids.

Everything here is computed once per process and cached: the template tissue fields on the
full quasi-raw grid, the two challenge masks with their exact voxel counts, the ventricle
deformation field, the 284 parcels, and per (modality, factor) the fields a subject is
rendered from.

Coordinates: "template mm" are voxel indices of the full quasi-raw grid (182 x 218 x 182,
1 mm isotropic). World (MNI) coordinates are ``A_q @ (i, j, k, 1)`` with ``A_q`` the
quasi-raw affine, so distances in template mm are millimetres.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from brainage.data.modalities import MODALITIES, grid
from brainage.errors import BrainAgeError

__all__ = [
    "TEMPLATE_SHAPE",
    "FIELD_NAMES",
    "N_PARCELS",
    "Template",
    "GridFields",
    "template",
    "full_masks",
    "grid_fields",
    "world_to_template",
    "resample_axes",
    "dct_bases",
]

TEMPLATE_SHAPE: tuple[int, int, int] = MODALITIES["quasiraw"].shape
_TEMPLATE_AFFINE = np.asarray(MODALITIES["quasiraw"].affine, dtype=float)

#: Fields sampled for every rendered voxel, in this order (see :class:`Template`).
FIELD_NAMES: tuple[str, ...] = ("tissue", "wm", "icv", "tissue_edge", "wm_edge")
N_PARCELS = 284
#: Highest DCT order kept per axis for the smooth random fields.
DCT_ORDER = 10
_VENTRICLE_SIGMA_MM = 5.0


@dataclass(frozen=True, eq=False)
class Template:
    """Template fields on the full quasi-raw grid (182, 218, 182), float32 unless noted.

    Attributes:
        t1: MNI152 2009 T1 intensities in [0, 1].
        gm, wm: grey / white matter probabilities.
        tissue: gm + wm (clipped to [0, 1]).
        icv: soft intracranial (brain) probability, >= tissue; CSF = icv - tissue.
        brain: binary brain mask (bool).
        tissue_edge: |grad tissue| (1/mm): the change of tissue fraction when the tissue/CSF
            boundary moves outwards by 1 mm (first order).
        wm_edge: |grad wm| on the grey/white interface (1/mm).
        deep_gm: smooth weight in [0, 1] of the subcortical grey-matter region (basal
            ganglia, thalamus).
        regional: cortical-thinning weight (1 = average cortex; frontal > occipital,
            cerebellum and deep structures < 1).
        ventricle_wall: smooth weight in [0, 1] of the tissue around the lateral ventricles
            (ventricles dilated by 4 mm, blurred with sigma 2 mm).
        ventricles: lateral ventricles (bool).
        lobe: region labels (uint8) for reporting effect sizes, see :data:`REGIONS`.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    tissue: np.ndarray
    icv: np.ndarray
    brain: np.ndarray
    tissue_edge: np.ndarray
    wm_edge: np.ndarray
    deep_gm: np.ndarray
    regional: np.ndarray
    ventricle_wall: np.ndarray
    ventricles: np.ndarray
    lobe: np.ndarray

    @property
    def icv_cm3(self) -> float:
        """Intracranial volume of the template (cm^3): the sum of ``icv`` over 1 mm voxels."""
        return float(self.icv.sum(dtype=np.float64)) / 1000.0


#: Labels of :attr:`Template.lobe` (rough MNI boxes, for reporting only).
REGIONS: dict[int, str] = {
    1: "frontal",
    2: "parietal",
    3: "temporal",
    4: "occipital",
    5: "subcortical",
    6: "cerebellum",
}


# --------------------------------------------------------------------------- resampling


def world_to_template(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis scale and offset mapping voxel indices of an axis-aligned grid to template mm.

    Returns ``(scale, offset)`` with ``q_a = scale[a] * index_a + offset[a]``.
    Raises ValueError when the grid is rotated or permuted relative to the template.
    """
    m = np.linalg.inv(_TEMPLATE_AFFINE) @ np.asarray(affine, dtype=float)
    lin = m[:3, :3]
    if not np.allclose(lin, np.diag(np.diag(lin)), atol=1e-6):
        raise BrainAgeError(f"grid affine is not axis-aligned with the template grid:\n{affine}")
    return np.diag(lin).copy(), m[:3, 3].copy()


def _axis_linear(data: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    n = data.shape[axis]
    pos = np.clip(np.asarray(positions, dtype=np.float64), 0.0, n - 1)
    if np.array_equal(pos, np.rint(pos)):
        return np.take(data, pos.astype(np.intp), axis=axis)
    lo = np.minimum(np.floor(pos).astype(np.intp), max(n - 2, 0))
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo).astype(np.float32)
    shape = [1] * data.ndim
    shape[axis] = -1
    a = np.take(data, lo, axis=axis)
    b = np.take(data, hi, axis=axis)
    return a + (b - a) * w.reshape(shape)


def resample_axes(
    data: np.ndarray, positions: tuple[np.ndarray, np.ndarray, np.ndarray], sigma: float = 0.0
) -> np.ndarray:
    """Trilinear interpolation of ``data`` (..., X, Y, Z) on a tensor grid of voxel positions.

    ``positions[a]`` holds the (fractional) voxel coordinates along the last three axes;
    positions outside the array take the edge value. Equivalent to
    ``scipy.ndimage.map_coordinates(order=1)`` on the product grid, in three 1-D passes.

    ``sigma > 0`` first blurs with a Gaussian (sigma in voxels, truncated at 3 sigma), one axis
    at a time: blurring and interpolating along one axis commute with both along another, so
    reducing each axis right after blurring it gives the same result as blurring the whole
    volume first, at a fraction of the cost.
    """
    out = data
    for a, pos in enumerate(positions):
        axis = out.ndim - 3 + a
        if sigma > 0:
            out = ndi.gaussian_filter1d(out, sigma, axis=axis, truncate=3.0)
        out = _axis_linear(out, pos, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def _to_template_grid(img) -> np.ndarray:
    """A nilearn/nibabel image resampled onto the full quasi-raw grid (world-to-voxel mapping)."""
    data = np.asarray(img.get_fdata(dtype=np.float32))
    m = np.linalg.inv(img.affine) @ _TEMPLATE_AFFINE
    lin = m[:3, :3]
    if not np.allclose(lin, np.diag(np.diag(lin)), atol=1e-6):
        raise BrainAgeError("the nilearn template is not axis-aligned with the OpenBHB grid")
    positions = tuple(np.diag(lin)[a] * np.arange(TEMPLATE_SHAPE[a]) + m[a, 3] for a in range(3))
    return resample_axes(data, positions)


def dct_bases(q: np.ndarray, length: int, order: int = DCT_ORDER) -> tuple[np.ndarray, np.ndarray]:
    """DCT-II basis (n, order) on template-mm coordinates ``q`` of an axis of ``length`` mm, and its derivative (1/mm)."""
    k = np.arange(order, dtype=np.float64)
    arg = np.pi * np.outer(np.asarray(q, dtype=np.float64) + 0.5, k) / length
    return np.cos(arg).astype(np.float32), (-(np.pi * k / length) * np.sin(arg)).astype(np.float32)


# --------------------------------------------------------------------------- template


def _gradient_magnitude(field: np.ndarray) -> np.ndarray:
    g = np.gradient(field)
    return np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2).astype(np.float32)


def _world_axes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNI x, y, z (mm) of the template grid as broadcastable (X,1,1), (1,Y,1), (1,1,Z) arrays."""
    axes = []
    for a in range(3):
        v = _TEMPLATE_AFFINE[a, a] * np.arange(TEMPLATE_SHAPE[a], dtype=np.float32) + _TEMPLATE_AFFINE[a, 3]
        shape = [1, 1, 1]
        shape[a] = -1
        axes.append(v.reshape(shape).astype(np.float32))
    return tuple(axes)  # type: ignore[return-value]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@functools.lru_cache(maxsize=1)
def template() -> Template:
    """Load the nilearn MNI152 2009 templates and derive every template field (cached)."""
    from nilearn import datasets

    t1 = _to_template_grid(datasets.load_mni152_template(resolution=1))
    gm = np.clip(_to_template_grid(datasets.load_mni152_gm_template(resolution=1)), 0, 1)
    wm = np.clip(_to_template_grid(datasets.load_mni152_wm_template(resolution=1)), 0, 1)
    brain = _to_template_grid(datasets.load_mni152_brain_mask(resolution=1)) > 0.5
    tissue = np.clip(gm + wm, 0, 1)
    icv = np.clip(np.maximum(ndi.gaussian_filter(brain.astype(np.float32), 0.7), tissue), 0, 1)

    x, y, z = _world_axes()
    # depth below the brain surface (mm), computed at 2 mm and interpolated
    depth2 = ndi.distance_transform_edt(brain[::2, ::2, ::2], sampling=2.0).astype(np.float32)
    depth = resample_axes(depth2, tuple(np.arange(n) / 2.0 for n in TEMPLATE_SHAPE))
    cortex = np.clip((25.0 - depth) / 15.0, 0.0, 1.0)
    cerebellum = _sigmoid(-(z + 22.0) / 4.0) * _sigmoid(-(y + 45.0) / 5.0)
    anterior = 1.0 + 0.35 * np.clip((y + 20.0) / 60.0, -1.0, 1.0)
    regional = (0.3 + 0.7 * cortex) * anterior * (1.0 - 0.45 * cerebellum)
    regional = ndi.gaussian_filter(regional.astype(np.float32), 4.0)
    tissue_edge = _gradient_magnitude(tissue)
    gm_near = np.clip(ndi.gaussian_filter(gm, 1.5) / 0.3, 0.0, 1.0)
    wm_edge = (_gradient_magnitude(wm) * gm_near).astype(np.float32)
    deep_gm = ndi.gaussian_filter((gm * (1.0 - cortex) * (1.0 - cerebellum)).astype(np.float32), 3.0)

    ventricles = _lateral_ventricles(tissue, icv, brain, depth, x, y, z)
    wall = ndi.binary_dilation(ventricles, iterations=4).astype(np.float32)
    ventricle_wall = np.clip(ndi.gaussian_filter(wall, 2.0), 0.0, 1.0)
    lobe = _lobes(brain, cortex, cerebellum, x, y, z)
    return Template(
        t1=t1,
        gm=gm,
        wm=wm,
        tissue=tissue,
        icv=icv,
        brain=brain,
        tissue_edge=tissue_edge,
        wm_edge=wm_edge,
        deep_gm=np.clip(deep_gm, 0, 1).astype(np.float32),
        regional=regional,
        ventricle_wall=ventricle_wall,
        ventricles=ventricles,
        lobe=lobe,
    )


def _lateral_ventricles(tissue, icv, brain, depth, x, y, z) -> np.ndarray:
    """Largest deep, central CSF component of the template: the lateral ventricles (bool)."""
    csf = icv - tissue
    cand = (csf > 0.5) & brain & (depth > 10) & (np.abs(x) < 35) & (y > -60) & (y < 40) & (z > -15) & (z < 40)
    labels, n = ndi.label(cand)
    if n == 0:
        raise RuntimeError("no ventricle found in the MNI152 template")
    sizes = ndi.sum_labels(cand, labels, index=np.arange(1, n + 1))
    vent = labels == (int(np.argmax(sizes)) + 1)
    return ndi.binary_dilation(vent, iterations=1) & (csf > 0.2)


def _lobes(brain, cortex, cerebellum, x, y, z) -> np.ndarray:
    """Coarse region labels (see :data:`REGIONS`) from MNI coordinates; 0 outside the brain."""
    shape = brain.shape
    lobe = np.zeros(shape, dtype=np.uint8)
    yy = np.broadcast_to(y, shape)
    zz = np.broadcast_to(z, shape)
    lobe[brain & (yy > 0)] = 1
    lobe[brain & (yy <= 0) & (yy > -60) & (zz >= 10)] = 2
    lobe[brain & (yy <= 0) & (zz < 10)] = 3
    lobe[brain & (yy <= -60) & (zz >= 10)] = 4
    lobe[brain & (yy <= -60) & (zz < 10)] = 4
    lobe[brain & (np.broadcast_to(cortex, shape) < 0.2)] = 5
    lobe[brain & (np.broadcast_to(cerebellum, shape) > 0.5)] = 6
    return lobe


# --------------------------------------------------------------------------- masks


def _top_n(score: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of the ``n`` highest values (ties broken by C-order position)."""
    if n > score.size:
        raise BrainAgeError(f"cannot select {n} voxels from a grid of {score.size}")
    order = np.argsort(-score.ravel(), kind="stable")[:n]
    mask = np.zeros(score.size, dtype=bool)
    mask[order] = True
    return mask.reshape(score.shape)


@functools.lru_cache(maxsize=1)
def full_masks() -> dict[str, np.ndarray]:
    """Mask images (float32) on the full OpenBHB grids, selecting exactly the official voxel counts.

    * ``vbm``: a GM TPM-like map (template GM probability smoothed with sigma 2.5 mm, on
      the 1.5 mm grid), remapped monotonically so that its 519,945 highest voxels lie in
      [0.06, 1] and all others in [0, 0.045]: thresholding at > 0.05 selects exactly them.
    * ``quasiraw``: a skull-stripped T1 (template intensities, at least 1e-3) on the
      1,827,095 voxels ranking highest in the smoothed template brain mask, 0 elsewhere.
    """
    tpl = template()
    masks: dict[str, np.ndarray] = {}

    score = ndi.gaussian_filter(tpl.brain.astype(np.float32), 2.0)
    sel = _top_n(score, MODALITIES["quasiraw"].n_voxels)
    masks["quasiraw"] = np.where(sel, np.maximum(tpl.t1, 1e-3), 0.0).astype(np.float32)

    shape, affine = grid("vbm", 1)
    scale, offset = world_to_template(affine)
    tpm = resample_axes(
        ndi.gaussian_filter(tpl.gm, 2.5), tuple(scale[a] * np.arange(shape[a]) + offset[a] for a in range(3))
    )
    sel = _top_n(tpm, MODALITIES["vbm"].n_voxels)
    cut = float(tpm[sel].min())
    above = 0.06 + (tpm - cut) * (0.94 / max(1.0 - cut, 1e-6))
    below = np.clip(tpm, 0.0, None) * (0.045 / max(cut, 1e-6))
    masks["vbm"] = np.where(sel, above, np.minimum(below, 0.045)).astype(np.float32)
    return masks


@functools.lru_cache(maxsize=1)
def _support_region() -> np.ndarray:
    """Template voxels within 12 mm of the intracranial region (bool, full template grid)."""
    icv = template().icv > 0.01
    far = ndi.distance_transform_edt(~icv[::2, ::2, ::2], sampling=2.0)
    near = resample_axes((far <= 12.0).astype(np.float32), tuple(np.arange(n) / 2.0 for n in TEMPLATE_SHAPE))
    return near > 0.5


# --------------------------------------------------------------------------- ventricles, parcels


@dataclass(frozen=True, eq=False)
class _VentricleField:
    gradient: np.ndarray  # (3, X2, Y2, Z2): grad of the smoothed ventricle indicator, max norm 1
    hessian: np.ndarray  # (6, X2, Y2, Z2): xx, yy, zz, xy, xz, yz (1/mm)
    max_growth_mm: float  # largest outward shift keeping the map invertible (det >= 0.1)
    max_shrink_mm: float


@functools.lru_cache(maxsize=1)
def _ventricle_field() -> _VentricleField:
    """Displacement generator of ventricle growth, on a 2 mm grid of template mm.

    A subject with growth ``d`` (mm) samples the template at ``q + d * gradient(q)``: the
    ventricle boundary moves outwards by up to ``d`` mm, and the tissue around it is
    compressed (the map is the identity away from the ventricles).
    """
    vent = template().ventricles.astype(np.float32)
    pad = [(0, (-n) % 2) for n in vent.shape]
    vent = np.pad(vent, pad)
    v2 = vent.reshape(vent.shape[0] // 2, 2, vent.shape[1] // 2, 2, vent.shape[2] // 2, 2).mean(axis=(1, 3, 5))
    sigma = _VENTRICLE_SIGMA_MM / 2.0

    def deriv(*orders: int) -> np.ndarray:
        order = [0, 0, 0]
        for o in orders:
            order[o] += 1
        return ndi.gaussian_filter(v2, sigma, order=order) / (2.0 ** len(orders))

    grad = np.stack([deriv(a) for a in range(3)])
    norm = float(np.sqrt((grad**2).sum(axis=0)).max())
    hess = np.stack([deriv(0, 0), deriv(1, 1), deriv(2, 2), deriv(0, 1), deriv(0, 2), deriv(1, 2)]) / norm
    grad = grad / norm
    sig = np.abs(hess).max(axis=0) > 1e-4
    h = hess[:, sig].T
    mats = np.stack(
        [
            np.stack([h[:, 0], h[:, 3], h[:, 4]], -1),
            np.stack([h[:, 3], h[:, 1], h[:, 5]], -1),
            np.stack([h[:, 4], h[:, 5], h[:, 2]], -1),
        ],
        1,
    ).astype(np.float64)
    eig = np.linalg.eigvalsh(mats)
    # det(I + d H) >= 0.1 for d in [-max_shrink, max_growth] (each factor >= 0.1^(1/3) ~ 0.46)
    lim = 1.0 - 0.1 ** (1.0 / 3.0)
    return _VentricleField(
        gradient=grad.astype(np.float32),
        hessian=hess.astype(np.float32),
        max_growth_mm=float(lim / max(-eig.min(), 1e-6)),
        max_shrink_mm=float(lim / max(eig.max(), 1e-6)),
    )


@functools.lru_cache(maxsize=1)
def _ventricle_roi() -> np.ndarray:
    """Lateral ventricles dilated by 6 mm (bool, full template grid): where their volume is measured."""
    return ndi.binary_dilation(template().ventricles, iterations=6)


@functools.lru_cache(maxsize=1)
def parcel_centroids() -> np.ndarray:
    """284 parcel centres (template mm): deterministic k-means of the VBM mask's voxel positions.

    The points are the full-resolution VBM mask voxels on every third grid index; Lloyd's
    algorithm runs 30 iterations from a k-means++ start with a fixed generator.
    """
    mask = full_masks()["vbm"] > MODALITIES["vbm"].threshold
    sub = mask[::3, ::3, ::3]
    scale, offset = world_to_template(grid("vbm", 3)[1])
    idx = np.argwhere(sub).astype(np.float64)
    pts = idx * scale + offset
    rng = np.random.default_rng(N_PARCELS)
    centres = np.empty((N_PARCELS, 3))
    centres[0] = pts[rng.integers(len(pts))]
    d2 = ((pts - centres[0]) ** 2).sum(1)
    for k in range(1, N_PARCELS):
        centres[k] = pts[rng.choice(len(pts), p=d2 / d2.sum())]
        d2 = np.minimum(d2, ((pts - centres[k]) ** 2).sum(1))
    for _ in range(30):
        labels = cKDTree(centres).query(pts)[1]
        counts = np.bincount(labels, minlength=N_PARCELS)
        for a in range(3):
            sums = np.bincount(labels, weights=pts[:, a], minlength=N_PARCELS)
            centres[:, a] = np.where(counts > 0, sums / np.maximum(counts, 1), centres[:, a])
    return centres


# --------------------------------------------------------------------------- per-grid fields


@dataclass(frozen=True, eq=False)
class GridFields:
    """What rendering a subject on ``grid(modality, factor)`` needs, precomputed once.

    Attributes:
        modality, factor, shape (X, Y, Z), affine (4x4, mm).
        spacing: voxel size of the output grid (mm).
        q_axes: template-mm coordinate of each output voxel, per axis.
        work: (5, Xw, Yw, Zw) fields of :data:`FIELD_NAMES`, pre-smoothed with
            ``presmooth_mm`` (sigma) and stored every ``work_spacing`` mm.
        mask_image: the challenge mask image on this grid (subsampled full-grid mask).
        mask: boolean mask (X, Y, Z) = mask_image > threshold.
        support: C-order flat indices of the voxels that can hold brain (within 12 mm of
            the template's intracranial region); every other voxel renders to 0.
        support_q: (3, n_support) template-mm position of those voxels.
        regional, deep_gm, ventricle_wall: (n_support,) cortical-thinning, subcortical and
            periventricular weights at those positions (smooth, so sampled without the
            subject's deformation).
        vent_gradient: (3, n_support) ventricle-growth displacement per mm of growth.
        vent_hessian: (6, n_support) its derivatives (VBM grid only, else None).
        vent_roi: lateral ventricles dilated by 6 mm (VBM grid only), to measure their volume.
        parcels: parcel label (0..283) of every mask voxel in mask order (VBM grid only).
        bases, dbases: per axis, DCT basis (n, DCT_ORDER) and derivative (1/mm).
        lobe: region label of each voxel (VBM grid only).
    """

    modality: str
    factor: int
    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: float
    q_axes: tuple[np.ndarray, np.ndarray, np.ndarray]
    work: np.ndarray
    work_spacing: float
    presmooth_mm: float
    mask_image: np.ndarray
    mask: np.ndarray
    support: np.ndarray
    support_q: np.ndarray
    regional: np.ndarray
    deep_gm: np.ndarray
    ventricle_wall: np.ndarray
    vent_gradient: np.ndarray
    vent_hessian: np.ndarray | None
    vent_roi: np.ndarray | None
    parcels: np.ndarray | None
    lobe: np.ndarray | None
    bases: tuple[np.ndarray, np.ndarray, np.ndarray]
    dbases: tuple[np.ndarray, np.ndarray, np.ndarray]

    @property
    def voxel_cm3(self) -> float:
        return self.spacing**3 / 1000.0


@functools.lru_cache(maxsize=8)
def grid_fields(modality: str, factor: int) -> GridFields:
    """Precompute the rendering fields of one output grid (cached per process)."""
    mod = MODALITIES[modality]
    shape, affine = grid(modality, factor)
    scale, offset = world_to_template(affine)
    q_axes = tuple((scale[a] * np.arange(shape[a]) + offset[a]).astype(np.float32) for a in range(3))
    spacing = float(abs(affine[0, 0]))
    presmooth = 0.4 * spacing if spacing >= 2.0 else 0.0
    work_spacing = max(1.0, spacing / 2.0)

    tpl = template()
    work_pos = tuple(np.arange(0.0, n - 1 + 1e-6, work_spacing) for n in TEMPLATE_SHAPE)
    work_arr = np.stack([resample_axes(getattr(tpl, name), work_pos, sigma=presmooth) for name in FIELD_NAMES])

    mask_image = np.ascontiguousarray(full_masks()[modality][::factor, ::factor, ::factor])
    mask = mask_image > mod.threshold

    nearest = np.ix_(
        *(np.clip(np.rint(q).astype(np.intp), 0, n - 1) for q, n in zip(q_axes, TEMPLATE_SHAPE, strict=True))
    )
    support = np.flatnonzero(_support_region()[nearest] | mask)
    idx = np.unravel_index(support, shape)
    support_q = np.stack([q_axes[a][idx[a]] for a in range(3)]).astype(np.float32)
    regional = tpl.regional[nearest].reshape(-1)[support]
    deep_gm = tpl.deep_gm[nearest].reshape(-1)[support]
    ventricle_wall = tpl.ventricle_wall[nearest].reshape(-1)[support]

    vf = _ventricle_field()
    pos2 = tuple((q - 0.5) / 2.0 for q in q_axes)
    vent_gradient = resample_axes(vf.gradient, pos2).reshape(3, -1)[:, support]
    vent_hessian = vent_roi = parcels = lobe = None
    if modality == "vbm":
        vent_hessian = resample_axes(vf.hessian, pos2).reshape(6, -1)[:, support]
        vent_roi = _ventricle_roi()[nearest]
        lobe = tpl.lobe[nearest]
        idx = np.argwhere(mask).astype(np.float64)
        parcels = cKDTree(parcel_centroids()).query(idx * scale + offset)[1].astype(np.int16)

    bases, dbases = zip(*(dct_bases(q_axes[a], TEMPLATE_SHAPE[a]) for a in range(3)), strict=True)
    return GridFields(
        modality=modality,
        factor=int(factor),
        shape=tuple(shape),
        affine=affine,
        spacing=spacing,
        q_axes=q_axes,
        work=work_arr,
        work_spacing=work_spacing,
        presmooth_mm=presmooth,
        mask_image=mask_image,
        mask=mask,
        support=support,
        support_q=support_q,
        regional=regional,
        deep_gm=deep_gm,
        ventricle_wall=ventricle_wall,
        vent_gradient=vent_gradient,
        vent_hessian=vent_hessian,
        vent_roi=vent_roi,
        parcels=parcels,
        lobe=lobe,
        bases=tuple(bases),
        dbases=tuple(dbases),
    )


def ventricle_limits() -> tuple[float, float]:
    """(max shrink, max growth) of the ventricles in mm for which the deformation stays invertible."""
    vf = _ventricle_field()
    return vf.max_shrink_mm, vf.max_growth_mm
