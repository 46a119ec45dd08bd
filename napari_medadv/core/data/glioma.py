"""Deterministic BraTS-style glioma MR phantoms for the demo (the chest radiographs are in
:mod:`.cxr`).

Everything here is generated from files that ship inside PyPI wheels, never downloaded: the
cases start from the MNI ICBM152 2009a template in ``nilearn`` (T1 plus grey/white-matter
probability maps, 1 mm), resampled to a modest grid (:data:`GLIOMA_GRID`: 64 x 80 x 64 voxels of
2.5 mm, RAS, MNI world coordinates preserved). Four contrasts (T1, T1Gd, T2, FLAIR) are simulated
from the tissue maps, a synthetic tumour (necrotic core 1, enhancing rim 4, oedema 2: the BraTS
2018-2020 labels) is painted into white matter, then a smooth bias field and Rician noise are
applied and everything outside the brain is zeroed (skull-stripped look).

Determinism: every random draw comes from its own stream (:mod:`.seeds`); the same seed, grid and
package versions give identical arrays. Held-out cases use :data:`~.seeds.GLIOMA_HELDOUT_SEEDS`.

This module must not import napari, qtpy or magicgui. ``nilearn`` and ``nibabel`` are imported
lazily, only by the functions that need them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..brats import BRATS_CHANNELS, BRATS_LABELS
from .fields import smooth_field, smoothstep
from .seeds import STREAM_BIAS, STREAM_NOISE, STREAM_PARAMS, STREAM_SHAPE, stream_rng

__all__ = [
    "BRATS_LABELS",
    "GLIOMA_CHANNELS",
    "GLIOMA_1MM_GRID",
    "GLIOMA_GRID",
    "GLIOMA_INT16_SLOPE",
    "GliomaParams",
    "Grid",
    "MNIAnatomy",
    "load_mni_anatomy",
    "make_glioma_case",
    "read_brats_case",
    "sample_glioma_params",
    "write_brats_case",
]


#: BraTS 2018-2020 label values: 0 background, 1 necrotic/non-enhancing core, 2 oedema,
#: 4 enhancing tumour.
GLIOMA_CHANNELS = BRATS_CHANNELS
#: Shipped NIfTI images are int16 with ``scl_slope`` = this value, so ``get_fdata()`` returns the
#: generator's float scale (white matter on T1 ~ 1) to within half a quantisation step.
GLIOMA_INT16_SLOPE = 1e-3


@dataclass(frozen=True)
class Grid:
    """An isotropic, axis-aligned (RAS) voxel grid placed in MNI world coordinates (mm).

    ``center_mm`` is the world position of the grid centre (between the two middle voxels
    when a dimension is even).
    """

    shape: tuple[int, int, int] = (64, 80, 64)
    spacing_mm: float = 2.5
    center_mm: tuple[float, float, float] = (0.0, -17.0, 5.0)

    def __post_init__(self):
        if len(self.shape) != 3 or any(int(n) < 8 for n in self.shape):
            raise ValueError(f"Grid.shape must be three sizes >= 8, got {self.shape}")
        if not self.spacing_mm > 0:
            raise ValueError(f"Grid.spacing_mm must be > 0, got {self.spacing_mm}")
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "center_mm", tuple(float(c) for c in self.center_mm))

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-index -> world (mm, RAS) matrix."""
        a = np.eye(4)
        a[:3, :3] *= self.spacing_mm
        a[:3, 3] = np.asarray(self.center_mm) - (np.asarray(self.shape) - 1) / 2.0 * self.spacing_mm
        return a


#: Default grid: 64 x 80 x 64 voxels of 2.5 mm (160 x 200 x 160 mm) centred on the MNI brain's
#: bounding box (x -72..72, y -107..73, z -72..82 mm). Every dimension is divisible by 16 (four
#: 2x poolings of a UNet) and the whole brain fits with a margin.
GLIOMA_GRID = Grid()

#: The 1 mm sample for talks (``sample_data/glioma_1mm``): the MNI template's own grid, 197 x 233 x
#: 189 voxels of 1 mm (x -98..98, y -134..98, z -72..116 mm), so nothing is resampled but the tissue
#: maps' anti-aliasing; the demo models (trained at 2.5 mm) read it through their declared spacing.
GLIOMA_1MM_GRID = Grid(shape=(197, 233, 189), spacing_mm=1.0, center_mm=(0.0, -18.0, 22.0))


@dataclass(frozen=True, eq=False)
class MNIAnatomy:
    """MNI ICBM152 2009a anatomy on a :class:`Grid` (read-only float32 arrays in [0, 1])."""

    grid: Grid
    t1: np.ndarray  # template T1, rescaled by nilearn to max 1
    gm: np.ndarray  # tissue probabilities (partial volumes), gm + wm + csf = 1 inside ``brain``
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray  # bool

    @property
    def affine(self) -> np.ndarray:
        return self.grid.affine


def _resample_axis_aligned(data: np.ndarray, src_affine: np.ndarray, grid: Grid) -> np.ndarray:
    """Anti-aliased trilinear resampling of an axis-aligned volume onto ``grid``."""
    src_vox = np.abs(np.diag(src_affine)[:3])
    if not np.allclose(src_affine[:3, :3], np.diag(np.diag(src_affine)[:3])):
        raise ValueError("source affine must be axis aligned")
    # Gaussian pre-filter approximating the box of the target voxel (FWHM-matched).
    sigma_mm = np.sqrt(np.maximum(grid.spacing_mm**2 - src_vox**2, 0.0)) / 2.3548
    data = ndi.gaussian_filter(np.asarray(data, np.float64), sigma_mm / src_vox, mode="constant")
    # target voxel -> source voxel: inv(src) @ grid
    m = np.linalg.inv(src_affine) @ grid.affine
    return ndi.affine_transform(
        data, np.diag(m)[:3], offset=m[:3, 3], output_shape=grid.shape, order=1, mode="constant", cval=0.0
    )


@functools.lru_cache(maxsize=4)
def load_mni_anatomy(grid: Grid = GLIOMA_GRID) -> MNIAnatomy:
    """MNI ICBM152 2009a T1 and tissue maps from ``nilearn``'s wheel, on ``grid`` (cached).

    Uses the native 1 mm files (``load_mni152_template``/``_gm_``/``_wm_template(resolution=1)``),
    resampled directly to ``grid`` with a Gaussian anti-alias filter and trilinear
    interpolation. The brain mask is nilearn's rule (T1 > 0.2) with holes (ventricles) filled;
    CSF is the part of the brain mask not explained by grey or white matter.
    Needs ``pip install nilearn``; reads only files inside the package (no network).
    """
    try:
        from nilearn import datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("The glioma phantom needs the MNI template shipped in nilearn: pip install nilearn") from err
    t1_img = datasets.load_mni152_template(resolution=1)
    gm_img = datasets.load_mni152_gm_template(resolution=1)
    wm_img = datasets.load_mni152_wm_template(resolution=1)
    src_aff = t1_img.affine
    for img in (gm_img, wm_img):
        if not np.allclose(img.affine, src_aff) or img.shape != t1_img.shape:
            raise RuntimeError("nilearn MNI templates are not on the same grid")

    t1_src = np.asarray(t1_img.dataobj, np.float64)
    mask_src = ndi.binary_fill_holes(t1_src > 0.2).astype(np.float64)
    t1 = _resample_axis_aligned(t1_src, src_aff, grid)
    gm = _resample_axis_aligned(np.asarray(gm_img.dataobj, np.float64), src_aff, grid)
    wm = _resample_axis_aligned(np.asarray(wm_img.dataobj, np.float64), src_aff, grid)
    mask = _resample_axis_aligned(mask_src, src_aff, grid)

    brain = ndi.binary_fill_holes(mask > 0.5)
    brain = _largest_component(brain)
    gm = np.clip(gm, 0, 1) * brain
    wm = np.clip(wm, 0, 1) * brain
    tot = gm + wm
    over = tot > 1
    gm[over] /= tot[over]
    wm[over] /= tot[over]
    csf = np.clip(1.0 - gm - wm, 0, 1) * brain

    arrays = {}
    for name, arr in (("t1", np.clip(t1, 0, 1) * brain), ("gm", gm), ("wm", wm), ("csf", csf)):
        arr = arr.astype(np.float32)
        arr.flags.writeable = False
        arrays[name] = arr
    brain.flags.writeable = False
    return MNIAnatomy(grid=grid, brain=brain, **arrays)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = ndi.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


# Mean intensities (white matter on T1 = 1) per tissue / lesion compartment and contrast.
# Orderings encoded here and kept under the per-case jitter below (tests check them):
#   T1: WM > GM > CSF;  T2: CSF > GM > WM;  FLAIR: oedema > GM > WM > CSF (CSF suppressed);
#   T1Gd: like T1, enhancing rim brightest; necrosis dark on T1/T1Gd and bright on T2.
_TISSUE = {  # gm, wm, csf
    "t1": (0.62, 1.00, 0.22),
    "t1ce": (0.62, 1.00, 0.24),
    "t2": (0.64, 0.42, 1.00),
    "flair": (0.70, 0.52, 0.12),
}
_LESION = {  # necrosis (1), enhancing (4), oedema (2)
    "t1": (0.30, 0.58, 0.64),
    "t1ce": (0.30, 1.50, 0.66),
    "t2": (1.05, 0.72, 0.90),
    "flair": (0.62, 0.88, 1.18),
}
# How much of the real template T1 goes into the T1-weighted channels (adds the deep grey
# nuclei and cortical texture that a three-class model lacks).
_REAL_T1_WEIGHT = 0.5


@dataclass(frozen=True)
class GliomaParams:
    """Everything random about one glioma case (drawn by :func:`sample_glioma_params`)."""

    seed: int
    center_mm: tuple[float, float, float]  # world (MNI) position of the tumour centre
    core_radius_mm: float  # tumour core (labels 1 + 4) mean radius
    necrosis_radius_mm: float  # necrotic core (label 1) mean radius
    edema_radius_mm: float  # whole tumour (labels 1 + 2 + 4) mean radius, 11..35 mm
    axes: tuple[float, float, float]  # ellipsoid axis ratios (product 1)
    rotation: tuple[tuple[float, float, float], ...]  # 3x3 orthonormal
    core_irregularity: float  # amplitude of the smooth random field on the core boundary
    edema_irregularity: float
    mass_effect: float  # 0..0.3: fraction by which the anatomy near the tumour is pushed out
    tissue_jitter: dict  # channel -> (gm, wm, csf) multipliers
    lesion_contrast: dict  # channel -> factor on the (lesion - WM) contrast
    gain: dict  # channel -> global scale
    bias_strength: float  # std of the log bias field inside the brain
    noise_sigma: float  # Rician noise sigma relative to each channel's gain


def sample_glioma_params(seed: int, grid: Grid = GLIOMA_GRID) -> GliomaParams:
    """Draw the random tumour/acquisition parameters for ``seed`` (stream ``STREAM_PARAMS``).

    Mean radii: tumour core (labels 1 + 4) uniform in 8..20 mm, whole tumour (with oedema)
    3..15 mm more (so 11..35 mm), enhancing rim 3..6 mm thick (necrosis radius >= 4.5 mm);
    the boundaries are then made irregular by smooth random fields; the centre is a white-matter voxel in the cerebrum far enough
    from the brain surface for the core to fit.
    """
    rng = stream_rng(seed, STREAM_PARAMS)
    anat = load_mni_anatomy(grid)
    sp = grid.spacing_mm

    r_core = rng.uniform(8.0, 20.0)
    r_edema = r_core + rng.uniform(3.0, 15.0)
    rim = rng.uniform(3.0, 6.0)
    r_nec = max(4.5, r_core - rim)

    ax = np.exp(rng.uniform(np.log(0.75), np.log(1.3), size=3))
    ax = ax / np.prod(ax) ** (1 / 3)
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))

    # candidate centres: white matter of the cerebrum (z > -10 mm, above the cerebellum),
    # at least ~the core radius from the brain surface
    depth_mm = ndi.distance_transform_edt(anat.brain) * sp
    world_z = grid.affine[2, 3] + sp * np.arange(grid.shape[2])
    cerebrum = np.broadcast_to(world_z > -10.0, grid.shape)
    cand = np.argwhere((anat.wm > 0.6) & cerebrum & (depth_mm >= 0.8 * r_core + 6.0))
    if len(cand) == 0:  # a very large core on a coarse grid: relax the depth constraint
        cand = np.argwhere((anat.wm > 0.6) & cerebrum)
    vox = cand[rng.integers(len(cand))] + rng.uniform(-0.5, 0.5, size=3)
    center = grid.affine[:3, :3] @ vox + grid.affine[:3, 3]

    return GliomaParams(
        seed=int(seed),
        center_mm=tuple(float(c) for c in center),
        core_radius_mm=float(r_core),
        necrosis_radius_mm=float(r_nec),
        edema_radius_mm=float(r_edema),
        axes=tuple(float(a) for a in ax),
        rotation=tuple(tuple(float(v) for v in row) for row in q),
        core_irregularity=float(rng.uniform(0.05, 0.18)),
        edema_irregularity=float(rng.uniform(0.15, 0.4)),
        mass_effect=float(rng.uniform(0.0, 0.3)),
        tissue_jitter={c: tuple(float(v) for v in rng.uniform(0.94, 1.06, size=3)) for c in GLIOMA_CHANNELS},
        lesion_contrast={c: float(rng.uniform(0.55, 1.1)) for c in GLIOMA_CHANNELS},
        gain={c: float(rng.uniform(0.8, 1.25)) for c in GLIOMA_CHANNELS},
        bias_strength=float(rng.uniform(0.04, 0.12)),
        noise_sigma=float(rng.uniform(0.015, 0.045)),
    )


def _mass_effect_warp(arrays, center_vox, sigma_vox, m):
    """Push the anatomy radially away from ``center_vox`` (monotone radial map, m < 1)."""
    if m <= 0:
        return arrays
    shape = arrays[0].shape
    idx = np.indices(shape, dtype=np.float64)
    d = idx - np.asarray(center_vox, np.float64).reshape(3, 1, 1, 1)
    r2 = (d**2).sum(0)
    f = 1.0 - m * np.exp(-r2 / (2.0 * sigma_vox**2))  # sample closer to the centre => expand
    coords = np.asarray(center_vox).reshape(3, 1, 1, 1) + d * f
    return [ndi.map_coordinates(np.asarray(a, np.float64), coords, order=1, mode="nearest") for a in arrays]


def make_glioma_case(seed: int, grid: Grid = GLIOMA_GRID):
    """One BraTS-style glioma phantom.

    Parameters
    ----------
    seed : int
        Held-out cases use 1..4, training uses >= :data:`~.seeds.TRAIN_SEED_START`.
    grid : Grid
        Output grid (default :data:`GLIOMA_GRID`, 64 x 80 x 64 at 2.5 mm).

    Returns
    -------
    channels : dict[str, np.ndarray]
        ``"t1"``, ``"t1ce"``, ``"t2"``, ``"flair"``: float32 arrays of ``grid.shape`` (X, Y, Z),
        white matter on T1 ~ 1 (times a per-case gain), exactly 0 outside the brain.
    seg : np.ndarray
        uint8 labels in {0, 1, 2, 4}: 1 necrotic core, 2 oedema, 4 enhancing rim.
    affine : np.ndarray
        4x4 voxel -> MNI world (mm, RAS); equals ``grid.affine``.

    Examples
    --------
    >>> channels, seg, affine = make_glioma_case(1)           # doctest: +SKIP
    >>> channels["flair"].shape, sorted(np.unique(seg))      # doctest: +SKIP
    ((64, 80, 64), [0, 1, 2, 4])
    """
    p = sample_glioma_params(seed, grid)
    anat = load_mni_anatomy(grid)
    inv = np.linalg.inv(grid.affine)
    c_vox = inv[:3, :3] @ np.asarray(p.center_mm) + inv[:3, 3]
    tissue = _displaced_tissue(anat, p, c_vox, grid.spacing_mm)
    tumour = _tumour(seed, p, grid, c_vox, anat.brain, tissue)
    channels = _contrasts(seed, p, grid, anat.brain, tissue, tumour)
    return channels, tumour.seg, grid.affine.copy()


@dataclass(frozen=True, eq=False)
class _Tissue:
    """Template T1 and tissue fractions after the mass effect, inside the brain only."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray


@dataclass(frozen=True, eq=False)
class _Tumour:
    """Partial-volume weights of the tumour compartments, its texture field and its labels."""

    w_core: np.ndarray  # tumour core (necrosis + enhancing rim)
    w_nec: np.ndarray  # necrosis within the core
    w_edema: np.ndarray  # oedema, weighted by the tissue's susceptibility
    f_tex: np.ndarray  # lesion texture (unit-variance random field)
    seg: np.ndarray  # uint8 BraTS labels 0/1/2/4


def _displaced_tissue(anat: MNIAnatomy, p: GliomaParams, c_vox: np.ndarray, sp: float) -> _Tissue:
    """Step 1, mass effect: push the tissue away from the tumour; the skull (brain mask) stays
    put, so tissue pushed past it is cut off and whatever is pulled in from outside becomes CSF."""
    brain = anat.brain
    t1r, gm, wm = _mass_effect_warp(
        [anat.t1, anat.gm, anat.wm], c_vox, sigma_vox=1.5 * p.core_radius_mm / sp, m=p.mass_effect
    )
    t1r, gm, wm = t1r * brain, gm * brain, wm * brain
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    return _Tissue(t1r, gm, wm, csf)


def _tumour(seed: int, p: GliomaParams, grid: Grid, c_vox: np.ndarray, brain: np.ndarray, tissue: _Tissue) -> _Tumour:
    """Step 2, tumour geometry: ellipsoidal distance + smooth random fields (stream ``STREAM_SHAPE``)."""
    sp = grid.spacing_mm
    shape = grid.shape
    gm, wm = tissue.gm, tissue.wm
    srng = stream_rng(seed, STREAM_SHAPE)
    f_core = smooth_field(srng, shape, 6.0 / sp)
    f_nec = smooth_field(srng, shape, 4.0 / sp)
    f_edema = smooth_field(srng, shape, 8.0 / sp)
    f_tex = smooth_field(srng, shape, 2.0 / sp)
    d_mm = (np.indices(shape, dtype=np.float64) - c_vox.reshape(3, 1, 1, 1)) * sp
    rot = np.asarray(p.rotation)
    u = np.einsum("ij,j...->i...", rot.T, d_mm) / np.asarray(p.axes).reshape(3, 1, 1, 1)
    rho_mm = np.sqrt((u**2).sum(0))  # ellipsoidal radius (mm)
    # signed distances (mm, negative inside) of the three boundaries, perturbed
    s_core = rho_mm - p.core_radius_mm * (1.0 + p.core_irregularity * f_core)
    s_nec = rho_mm - p.necrosis_radius_mm * (1.0 + 1.5 * p.core_irregularity * f_nec)
    s_nec = np.maximum(s_nec, s_core + 2.5)  # keep an enhancing rim of >= 2.5 mm everywhere
    s_edema = rho_mm - p.edema_radius_mm * (1.0 + p.edema_irregularity * f_edema)

    soft = 0.5 * sp  # half-width of the partial-volume ramp (mm)
    w_core = smoothstep(0.5 - s_core / (2 * soft)) * brain
    w_nec = smoothstep(0.5 - s_nec / (2 * soft))
    # vasogenic oedema spreads in white matter, spares the cortex and CSF
    susceptibility = np.clip(wm + 0.35 * gm, 0.0, 1.0)
    w_edema = smoothstep(0.5 - s_edema / (4 * soft)) * susceptibility * brain

    core = (s_core < 0) & brain
    seg = np.zeros(shape, np.uint8)
    seg[(w_edema > 0.5) & ~core] = 2
    seg[core & (s_nec >= 0)] = 4
    seg[core & (s_nec < 0)] = 1
    return _Tumour(w_core, w_nec, w_edema, f_tex, seg)


def _contrasts(seed: int, p: GliomaParams, grid: Grid, brain: np.ndarray, tissue: _Tissue, tumour: _Tumour) -> dict:
    """Step 3, intensities of each contrast (gm + wm + csf = 1 inside the brain), then a bias
    field (stream ``STREAM_BIAS``) and Rician noise (stream ``STREAM_NOISE``); float32."""
    shape = grid.shape
    gm, wm, csf = tissue.gm, tissue.wm, tissue.csf
    tissue_sum = np.maximum(gm + wm + csf, 1e-6)
    brng = stream_rng(seed, STREAM_BIAS)
    nrng = stream_rng(seed, STREAM_NOISE)
    coords = (np.indices(shape, dtype=np.float64) - (np.asarray(shape) - 1).reshape(3, 1, 1, 1) / 2) / (
        np.asarray(shape).reshape(3, 1, 1, 1) / 2
    )
    real_t1 = tissue.t1 / max(float(np.median(tissue.t1[(wm > 0.9) & brain])), 1e-6)
    channels = {}
    for ch in GLIOMA_CHANNELS:
        jg, jw, jc = p.tissue_jitter[ch]
        vg, vw, vc = _TISSUE[ch]
        vg, vw, vc = vg * jg, vw * jw, vc * jc
        img = (vg * gm + vw * wm + vc * csf) / tissue_sum * brain
        if ch in ("t1", "t1ce"):
            img = (1 - _REAL_T1_WEIGHT) * img + _REAL_T1_WEIGHT * real_t1 * vw * brain
        img = _with_lesion(img, ch, vw, p.lesion_contrast[ch], tumour)
        img = img * np.exp(_log_bias_field(brng, coords, brain, p.bias_strength)) * p.gain[ch]
        # Rician noise (magnitude of a complex signal with Gaussian noise in both parts)
        sigma = p.noise_sigma * p.gain[ch]
        re = img + sigma * nrng.standard_normal(shape)
        im = sigma * nrng.standard_normal(shape)
        img = np.sqrt(re * re + im * im) * brain  # skull-stripped: exactly 0 outside the brain
        channels[ch] = img.astype(np.float32)
    return channels


def _with_lesion(img: np.ndarray, ch: str, vw: float, k: float, tumour: _Tumour) -> np.ndarray:
    """``img`` with the oedema and the tumour core blended in, their contrast to white matter
    (``vw``) scaled by ``k``."""
    l_nec, l_enh, l_ed = (vw + k * (v - _TISSUE[ch][1]) for v in _LESION[ch])
    tex = 1.0 + 0.10 * tumour.f_tex
    lesion_core = (tumour.w_nec * l_nec + (1 - tumour.w_nec) * l_enh) * tex
    img = (1 - tumour.w_edema) * img + tumour.w_edema * l_ed * tex
    return (1 - tumour.w_core) * img + tumour.w_core * lesion_core


def _log_bias_field(brng: np.random.Generator, coords: np.ndarray, brain: np.ndarray, strength: float) -> np.ndarray:
    """Smooth multiplicative bias field (its log): a random quadratic polynomial in normalised
    coordinates, zero mean and standard deviation ``strength`` inside the brain."""
    x, y, z = coords
    terms = (x, y, z, x * y, x * z, y * z, x * x, y * y, z * z)
    logb = sum(brng.standard_normal() * t for t in terms)
    logb = logb - logb[brain].mean()
    logb *= strength / max(float(logb[brain].std()), 1e-9)
    return logb


def write_brats_case(folder, case_id: str, channels: dict, seg: np.ndarray, affine: np.ndarray) -> dict:
    """Write ``<case_id>_{t1,t1ce,t2,flair,seg}.nii.gz`` into ``folder``; returns name -> Path.

    Images are stored as int16 with ``scl_slope`` = :data:`GLIOMA_INT16_SLOPE` (``get_fdata()``
    gives back the float values to within 0.0005), the segmentation as uint8. The gzip stream
    has mtime 0 (nibabel's deterministic writer), so the same arrays give the same bytes.
    """
    import nibabel as nib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.asarray(affine, np.float64)
    out = {}
    for ch in GLIOMA_CHANNELS:
        raw = np.clip(np.round(np.asarray(channels[ch], np.float64) / GLIOMA_INT16_SLOPE), -32768, 32767)
        img = nib.Nifti1Image(raw.astype(np.int16), affine)
        img.header.set_slope_inter(GLIOMA_INT16_SLOPE, 0.0)
        img.header.set_xyzt_units("mm")
        img.header.set_qform(affine, code=4)  # 4 = MNI_152
        img.header.set_sform(affine, code=4)
        path = folder / f"{case_id}_{ch}.nii.gz"
        nib.save(img, path)
        out[ch] = path
    seg = np.asarray(seg)
    if not set(np.unique(seg).tolist()) <= set(BRATS_LABELS):
        raise ValueError(f"seg has labels outside {BRATS_LABELS}: {np.unique(seg)}")
    img = nib.Nifti1Image(seg.astype(np.uint8), affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=4)
    img.header.set_sform(affine, code=4)
    path = folder / f"{case_id}_seg.nii.gz"
    nib.save(img, path)
    out["seg"] = path
    return out


def read_brats_case(folder, case_id: str):
    """Read what :func:`write_brats_case` wrote: ``(channels float32, seg uint8, affine)``."""
    import nibabel as nib

    folder = Path(folder)
    channels = {}
    affine = None
    for ch in GLIOMA_CHANNELS:
        img = nib.load(folder / f"{case_id}_{ch}.nii.gz")
        channels[ch] = img.get_fdata(dtype=np.float32)
        affine = img.affine if affine is None else affine
    seg_img = nib.load(folder / f"{case_id}_seg.nii.gz")
    seg = np.asarray(seg_img.dataobj).astype(np.uint8)
    return channels, seg, np.asarray(affine, np.float64)
