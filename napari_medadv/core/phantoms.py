"""Deterministic phantom data for the demo: glioma MR cases and chest radiographs.

Everything here is generated from files that ship inside PyPI wheels, never downloaded:

* **Glioma (BraTS-style) cases** start from the MNI ICBM152 2009a template in ``nilearn``
  (T1 plus grey/white-matter probability maps, 1 mm), resampled to a modest grid
  (:data:`GLIOMA_GRID`: 64 x 80 x 64 voxels of 2.5 mm, RAS, MNI world coordinates preserved).
  Four contrasts (T1, T1Gd, T2, FLAIR) are simulated from the tissue maps, a synthetic tumour
  (necrotic core 1, enhancing rim 4, oedema 2: the BraTS 2018-2020 labels) is painted into
  white matter, then a smooth bias field and Rician noise are applied and everything outside
  the brain is zeroed (skull-stripped look).
* **Chest radiographs** start from the one real PA chest radiograph in ``pydicom-data``
  (NEMA WG04 ``RG1_UNCR.dcm``, 15-bit MONOCHROME1 computed radiography) and derive
  augmented variants with synthetic "nodule" and "opacity" findings for a multi-label
  classifier.

Determinism: every random draw comes from ``numpy.random.default_rng([seed, stream])``
(PCG64, platform independent) with one stream per purpose (:data:`_STREAM_PARAMS` ...), so
e.g. switching a finding off does not change the noise. The same seed, grid and package
versions give identical arrays. Seeds 1..N are the shipped held-out cases; training code
uses seeds >= :data:`TRAIN_SEED_START` so the two never overlap.

This module must not import napari, qtpy or magicgui. ``nilearn`` and ``pydicom-data`` are
imported lazily, only by the functions that need them.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .brats import BRATS_CHANNELS, BRATS_LABELS

__all__ = [
    "BRATS_LABELS",
    "CXR_BASE_SIZE",
    "CXR_CLASSIFIER_SIZE",
    "CXR_FINDINGS",
    "CXR_HELDOUT_SEEDS",
    "GLIOMA_CHANNELS",
    "GLIOMA_GRID",
    "GLIOMA_HELDOUT_SEEDS",
    "GLIOMA_INT16_SLOPE",
    "TRAIN_SEED_START",
    "CXRCaseParams",
    "CXRLesion",
    "GliomaParams",
    "Grid",
    "MNIAnatomy",
    "cxr_lung_mask",
    "load_base_cxr",
    "load_mni_anatomy",
    "make_cxr_case",
    "make_glioma_case",
    "read_base_cxr_png",
    "read_brats_case",
    "render_cxr_case",
    "sample_cxr_params",
    "sample_glioma_params",
    "write_base_cxr_png",
    "write_brats_case",
]

#: First seed used for training data; shipped held-out cases use small seeds (1..N).
TRAIN_SEED_START = 1000
GLIOMA_HELDOUT_SEEDS = (1, 2, 3, 4)
CXR_HELDOUT_SEEDS = tuple(range(1, 25))

# Independent random streams per case (``default_rng([seed, stream])``).
_STREAM_PARAMS, _STREAM_SHAPE, _STREAM_BIAS, _STREAM_NOISE = 0, 1, 2, 3


def _rng(seed: int, stream: int) -> np.random.Generator:
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([int(seed), stream])


def _smooth_field(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    """Gaussian random field with unit standard deviation (float64)."""
    f = ndi.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="reflect")
    return (f - f.mean()) / (f.std() + 1e-12)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """0 for t <= 0, 1 for t >= 1, C1-smooth in between (compact support, unlike a sigmoid)."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# ---------------------------------------------------------------------------------------------
# Glioma MR phantom
# ---------------------------------------------------------------------------------------------

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
    """Draw the random tumour/acquisition parameters for ``seed`` (stream ``_STREAM_PARAMS``).

    Mean radii: tumour core (labels 1 + 4) uniform in 8..20 mm, whole tumour (with oedema)
    3..15 mm more (so 11..35 mm), enhancing rim 3..6 mm thick (necrosis radius >= 4.5 mm);
    the boundaries are then made irregular by smooth random fields; the centre is a white-matter voxel in the cerebrum far enough
    from the brain surface for the core to fit.
    """
    rng = _rng(seed, _STREAM_PARAMS)
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
        Held-out cases use 1..4, training uses >= :data:`TRAIN_SEED_START`.
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
    sp = grid.spacing_mm
    shape = grid.shape
    inv = np.linalg.inv(grid.affine)
    c_vox = inv[:3, :3] @ np.asarray(p.center_mm) + inv[:3, 3]

    # 1. mass effect: push the tissue away from the tumour; the skull (brain mask) stays put,
    #    so tissue pushed past it is cut off and whatever is pulled in from outside becomes CSF
    brain = anat.brain
    t1r, gm, wm = _mass_effect_warp(
        [anat.t1, anat.gm, anat.wm], c_vox, sigma_vox=1.5 * p.core_radius_mm / sp, m=p.mass_effect
    )
    t1r, gm, wm = t1r * brain, gm * brain, wm * brain
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain

    # 2. tumour geometry: ellipsoidal distance + smooth random fields
    srng = _rng(seed, _STREAM_SHAPE)
    f_core = _smooth_field(srng, shape, 6.0 / sp)
    f_nec = _smooth_field(srng, shape, 4.0 / sp)
    f_edema = _smooth_field(srng, shape, 8.0 / sp)
    f_tex = _smooth_field(srng, shape, 2.0 / sp)
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
    w_core = _smoothstep(0.5 - s_core / (2 * soft)) * brain
    w_nec = _smoothstep(0.5 - s_nec / (2 * soft))
    # vasogenic oedema spreads in white matter, spares the cortex and CSF
    susceptibility = np.clip(wm + 0.35 * gm, 0.0, 1.0)
    w_edema = _smoothstep(0.5 - s_edema / (4 * soft)) * susceptibility * brain

    core = (s_core < 0) & brain
    seg = np.zeros(shape, np.uint8)
    seg[(w_edema > 0.5) & ~core] = 2
    seg[core & (s_nec >= 0)] = 4
    seg[core & (s_nec < 0)] = 1

    # 3. intensities (gm + wm + csf = 1 inside the brain)
    tissue_sum = np.maximum(gm + wm + csf, 1e-6)
    brng = _rng(seed, _STREAM_BIAS)
    nrng = _rng(seed, _STREAM_NOISE)
    coords = (np.indices(shape, dtype=np.float64) - (np.asarray(shape) - 1).reshape(3, 1, 1, 1) / 2) / (
        np.asarray(shape).reshape(3, 1, 1, 1) / 2
    )
    real_t1 = t1r / max(float(np.median(t1r[(wm > 0.9) & brain])), 1e-6)
    channels = {}
    for ch in GLIOMA_CHANNELS:
        jg, jw, jc = p.tissue_jitter[ch]
        vg, vw, vc = _TISSUE[ch]
        vg, vw, vc = vg * jg, vw * jw, vc * jc
        img = (vg * gm + vw * wm + vc * csf) / tissue_sum * brain
        if ch in ("t1", "t1ce"):
            img = (1 - _REAL_T1_WEIGHT) * img + _REAL_T1_WEIGHT * real_t1 * vw * brain
        k = p.lesion_contrast[ch]
        l_nec, l_enh, l_ed = (vw + k * (v - _TISSUE[ch][1]) for v in _LESION[ch])
        tex = 1.0 + 0.10 * f_tex
        lesion_core = (w_nec * l_nec + (1 - w_nec) * l_enh) * tex
        img = (1 - w_edema) * img + w_edema * l_ed * tex
        img = (1 - w_core) * img + w_core * lesion_core
        # smooth multiplicative bias field: random quadratic polynomial in normalised coordinates
        x, y, z = coords
        terms = (x, y, z, x * y, x * z, y * z, x * x, y * y, z * z)
        logb = sum(brng.standard_normal() * t for t in terms)
        logb = logb - logb[brain].mean()
        logb *= p.bias_strength / max(float(logb[brain].std()), 1e-9)
        img = img * np.exp(logb) * p.gain[ch]
        # Rician noise (magnitude of a complex signal with Gaussian noise in both parts)
        sigma = p.noise_sigma * p.gain[ch]
        re = img + sigma * nrng.standard_normal(shape)
        im = sigma * nrng.standard_normal(shape)
        img = np.sqrt(re * re + im * im) * brain  # skull-stripped: exactly 0 outside the brain
        channels[ch] = img.astype(np.float32)

    return channels, seg, grid.affine.copy()


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


# ---------------------------------------------------------------------------------------------
# Chest radiograph
# ---------------------------------------------------------------------------------------------

CXR_FINDINGS = ("nodule", "opacity")
#: Internal working size of the base radiograph (square, pixels).
CXR_BASE_SIZE = 512
#: Input size of the demo classifier and of the shipped held-out cases.
CXR_CLASSIFIER_SIZE = 256
#: Native pixel pitch of RG1_UNCR.dcm. Its PixelSpacing is 0.000, but the collimator edges
#: (-184..184 mm horizontally over 1841 columns, 907..1299 mm vertically over 1955 rows)
#: give 0.2 mm in both directions.
_CXR_NATIVE_MM = 0.2
_CXR_DICOM = "RG1_UNCR.dcm"
# The base radiograph is RG1's 1955 x 1841 frame centre-cropped to 1841 x 1841 (rows 57..1897:
# removes the collimator band at the top and some abdomen at the bottom).
_CXR_WINDOW_PERCENTILES = (0.5, 98.0)


def _resize2d(img: np.ndarray, out_shape) -> np.ndarray:
    """Anti-aliased bilinear resize with pixel-centre alignment (float64)."""
    img = np.asarray(img, np.float64)
    out_shape = tuple(int(n) for n in out_shape)
    if img.shape == out_shape:
        return img.copy()
    f = np.asarray(img.shape, np.float64) / np.asarray(out_shape, np.float64)
    sigma = np.maximum((f - 1.0) / 2.0, 0.0)
    if np.any(sigma > 0):
        img = ndi.gaussian_filter(img, sigma, mode="nearest")
    return ndi.affine_transform(img, f, offset=(f - 1.0) / 2.0, output_shape=out_shape, order=1, mode="nearest")


@functools.lru_cache(maxsize=4)
def _base_cxr_cached(size: int) -> np.ndarray:
    try:
        import pydicom
        from pydicom.data import get_testdata_file
    except ImportError as err:  # pragma: no cover
        raise ImportError("load_base_cxr needs pydicom: pip install pydicom pydicom-data") from err
    path = get_testdata_file(_CXR_DICOM, download=False)
    if path is None:
        raise ImportError(
            f"{_CXR_DICOM} not found: install the pydicom-data wheel (pip install pydicom-data); "
            "this function never downloads"
        )
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float64)
    rows, cols = raw.shape
    n = min(rows, cols)
    r0, c0 = (rows - n) // 2, (cols - n) // 2
    raw = raw[r0 : r0 + n, c0 : c0 + n]
    lo, hi = np.percentile(raw, _CXR_WINDOW_PERCENTILES)
    img = np.clip((raw - lo) / (hi - lo), 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        img = 1.0 - img  # bright = dense
    img = np.clip(_resize2d(img, (size, size)), 0.0, 1.0).astype(np.float32)
    img.flags.writeable = False
    return img


def load_base_cxr(size: int = CXR_BASE_SIZE) -> np.ndarray:
    """The real PA chest radiograph RG1_UNCR.dcm from ``pydicom-data``, as float32 in [0, 1].

    Centre-cropped to a square (1841 x 1841: 57 rows off the top and bottom, keeps the aspect
    ratio, no padding), windowed to its 0.5-98th percentiles (its DICOM window, 15000/30000,
    spans the whole 15-bit range and would look flat), MONOCHROME1 inverted so dense = bright,
    and resized to ``size x size`` (anti-aliased). At 512 px a pixel is 0.719 mm.
    Never downloads: raises ``ImportError`` if ``pydicom-data`` is not installed.
    """
    if int(size) < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    return _base_cxr_cached(int(size)).copy()


def write_base_cxr_png(path, img: np.ndarray) -> None:
    """Write a [0, 1] float image as a 16-bit grayscale PNG (value * 65535, rounded)."""
    import imageio.v3 as iio

    img = np.asarray(img, np.float64)
    if img.ndim != 2 or img.min() < 0 or img.max() > 1:
        raise ValueError("expected a 2-D image in [0, 1]")
    iio.imwrite(Path(path), np.round(img * 65535.0).astype(np.uint16), extension=".png")


def read_base_cxr_png(path) -> np.ndarray:
    """Read a 16-bit PNG written by :func:`write_base_cxr_png` back to float32 in [0, 1]."""
    import imageio.v3 as iio

    arr = np.asarray(iio.imread(Path(path)))
    if arr.ndim == 3:
        arr = arr[..., 0]
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    return (arr.astype(np.float64) / scale).astype(np.float32)


# Hand-drawn outlines of the two lung fields on the 512 px base radiograph, (col, row) pixels:
# right lung (image left), then left lung (image right). Only a region of interest: the mask is
# what is also not dense inside it (see cxr_lung_mask).
# fmt: off
_CXR_LUNG_OUTLINES_512 = (
    ((150, 38), (95, 68), (68, 130), (54, 200), (54, 280), (60, 340), (72, 398), (110, 374),
     (150, 362), (195, 362), (218, 330), (218, 240), (208, 160), (202, 80), (182, 48)),
    ((330, 38), (302, 80), (296, 160), (300, 230), (330, 290), (370, 330), (400, 372), (432, 404),
     (458, 408), (464, 330), (464, 230), (448, 130), (422, 70), (382, 44)),
)
# fmt: on


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx**2 + yy**2 <= r * r


def cxr_lung_mask(base: np.ndarray) -> np.ndarray:
    """Crude lung-field mask of the (square) base radiograph from :func:`load_base_cxr`.

    Hand-tuned for RG1: inside two hand-drawn lung outlines, keep what is not dense (the image
    smoothed with sigma = size/64 below its 85th percentile inside the outlines: drops heart,
    diaphragm and spine), close and fill holes (this patient's lung masses), drop specks, and
    erode by size/128 px so findings stay off the pleura. Not a segmentation model.
    """
    from matplotlib.path import Path as MPath  # geometry only; no pyplot, no GUI backend

    img = np.asarray(base, np.float64)
    if img.ndim != 2 or img.shape[0] != img.shape[1]:
        raise ValueError(f"expected a square 2-D radiograph, got shape {img.shape}")
    n = img.shape[0]
    scale = n / CXR_BASE_SIZE
    yy, xx = np.mgrid[0:n, 0:n]
    pts = np.c_[xx.ravel() + 0.5, yy.ravel() + 0.5] / scale - 0.5  # pixel centres in 512 px units
    roi = np.zeros(n * n, bool)
    for outline in _CXR_LUNG_OUTLINES_512:
        roi |= MPath(np.asarray(outline, np.float64)).contains_points(pts)
    roi = roi.reshape(n, n)
    s = ndi.gaussian_filter(img, n / 64.0)
    mask = roi & (s < np.percentile(s[roi], 85))
    mask = ndi.binary_closing(mask, _disk(max(1, round(n / 64))))
    mask = ndi.binary_fill_holes(mask)
    mask = ndi.binary_opening(mask, _disk(max(1, round(n / 128))))
    mask = ndi.binary_erosion(mask, _disk(max(1, round(n / 128))))
    return mask


@dataclass(frozen=True)
class CXRLesion:
    """A synthetic finding in the augmented 512 px frame (row, col in pixels)."""

    kind: str  # "nodule" or "opacity"
    center_px: tuple[float, float]
    radius_mm: float
    amplitude: float  # added density (fraction of the remaining headroom 1 - b)
    irregularity: float
    support_px: float  # pixels farther than this from the centre are never changed


@dataclass(frozen=True)
class CXRCaseParams:
    """Everything random about one chest radiograph case (see :func:`sample_cxr_params`)."""

    seed: int
    rotation_deg: float
    scale: float
    shift_px: tuple[float, float]
    gamma: float
    contrast: float
    brightness: float
    noise_sigma: float
    nodule: CXRLesion | None
    opacity: CXRLesion | None

    @property
    def labels(self) -> dict:
        return {k: int(getattr(self, k) is not None) for k in CXR_FINDINGS}


_CXR_MM_PER_PX = _CXR_NATIVE_MM * 1841 / CXR_BASE_SIZE  # 0.719 mm at 512 px


def _cxr_affine(params: CXRCaseParams, n: int):
    """Output -> input pixel map (matrix, offset) for the mild augmentation about the centre."""
    th = np.deg2rad(params.rotation_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) / params.scale
    c = (n - 1) / 2.0
    center = np.array([c, c])
    offset = center - rot @ (center + np.asarray(params.shift_px))
    return rot, offset


_LUNG_MASK_CACHE: dict = {}


def _cached_lung_mask(base: np.ndarray) -> np.ndarray:
    """:func:`cxr_lung_mask` memoised on the base image's bytes (training calls it per case)."""
    base = np.ascontiguousarray(base, np.float32)
    key = (base.shape, hashlib.blake2b(base.tobytes(), digest_size=16).hexdigest())
    if key not in _LUNG_MASK_CACHE:
        if len(_LUNG_MASK_CACHE) >= 4:
            _LUNG_MASK_CACHE.pop(next(iter(_LUNG_MASK_CACHE)))
        mask = cxr_lung_mask(base)
        mask.flags.writeable = False
        _LUNG_MASK_CACHE[key] = mask
    return _LUNG_MASK_CACHE[key]


def _augmented_lung_mask(params: CXRCaseParams, base: np.ndarray) -> np.ndarray:
    mat, off = _cxr_affine(params, base.shape[0])
    m = _cached_lung_mask(base).astype(np.float64)
    return ndi.affine_transform(m, mat, offset=off, order=1, mode="constant") > 0.5


def sample_cxr_params(seed: int, base: np.ndarray | None = None, findings: dict | None = None) -> CXRCaseParams:
    """Draw augmentation and finding parameters for ``seed`` (stream ``_STREAM_PARAMS``).

    Each finding is present independently with p = 0.5; its geometry is drawn either way, so
    the presence flags do not change anything else. ``findings`` (e.g. ``{"nodule": True}``)
    overrides the drawn presence of the named findings (balanced training sets, tests).

    Nodule: 12-22 mm diameter, round, slightly lobulated, fully inside the lung mask.
    Opacity: 40-80 mm diameter irregular diffuse patch centred in the lung mask, clipped to it.
    Both are clearly visible (a demo classifier must learn them on a CPU in minutes), yet small
    next to the image's own round structures.
    Lesion coordinates are pixels of the augmented 512 px frame.
    """
    base = load_base_cxr(CXR_BASE_SIZE) if base is None else np.asarray(base, np.float32)
    if base.shape != (CXR_BASE_SIZE, CXR_BASE_SIZE):
        raise ValueError(f"base must be {CXR_BASE_SIZE}x{CXR_BASE_SIZE}, got {base.shape}")
    rng = _rng(seed, _STREAM_PARAMS)
    n = CXR_BASE_SIZE
    p = CXRCaseParams(
        seed=int(seed),
        rotation_deg=float(rng.uniform(-5, 5)),
        scale=float(rng.uniform(0.95, 1.05)),
        shift_px=tuple(float(v) for v in rng.uniform(-0.04 * n, 0.04 * n, size=2)),
        gamma=float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))),
        contrast=float(rng.uniform(0.9, 1.1)),
        brightness=float(rng.uniform(-0.04, 0.04)),
        noise_sigma=float(rng.uniform(0.004, 0.015)),
        nodule=None,
        opacity=None,
    )
    lungs = _augmented_lung_mask(p, base)
    present = dict(zip(CXR_FINDINGS, (rng.uniform(size=2) < 0.5).tolist()))
    for k, v in (findings or {}).items():
        if k not in CXR_FINDINGS:
            raise ValueError(f"unknown finding {k!r}; expected one of {CXR_FINDINGS}")
        present[k] = bool(v)

    # nodule: 12-22 mm diameter, centre at least radius + 2 mm inside the lung mask
    r_nod = rng.uniform(6.0, 11.0)
    depth = ndi.distance_transform_edt(lungs) * _CXR_MM_PER_PX
    cand = np.argwhere(depth >= r_nod + 2.0)
    if len(cand) == 0:  # cannot happen with RG1 (lungs are > 5 cm wide); keep a valid draw
        cand = np.argwhere(depth >= depth.max())
    cy, cx = cand[rng.integers(len(cand))] + rng.uniform(-0.5, 0.5, size=2)
    irr = rng.uniform(0.0, 0.15)
    nodule = CXRLesion(
        "nodule",
        (float(cy), float(cx)),
        float(r_nod),
        float(rng.uniform(0.6, 0.85)),
        float(irr),
        float(r_nod * (1 + irr) / _CXR_MM_PER_PX + 2.0),
    )

    # opacity: 40-80 mm diameter, centre at least half a radius inside the lung mask
    r_op = rng.uniform(20.0, 40.0)
    cand = np.argwhere(depth >= 0.5 * r_op)
    if len(cand) == 0:
        cand = np.argwhere(depth >= depth.max() * 0.8)
    cy, cx = cand[rng.integers(len(cand))] + rng.uniform(-0.5, 0.5, size=2)
    irr = rng.uniform(0.15, 0.35)
    opacity = CXRLesion(
        "opacity",
        (float(cy), float(cx)),
        float(r_op),
        float(rng.uniform(0.45, 0.65)),
        float(irr),
        float(r_op * (1.3 + 2.5 * irr) / _CXR_MM_PER_PX + 2.0),
    )
    return replace(p, nodule=nodule if present["nodule"] else None, opacity=opacity if present["opacity"] else None)


def _lesion_density(lesion: CXRLesion, n: int, seed: int, lungs: np.ndarray) -> np.ndarray:
    """Added-density map (>= 0, exactly 0 beyond ``lesion.support_px``) on an n x n frame."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    dy, dx = yy - lesion.center_px[0], xx - lesion.center_px[1]
    r_px = np.hypot(dy, dx)
    R = lesion.radius_mm / _CXR_MM_PER_PX
    # texture/shape fields come from their own stream, so they are the same with or without
    # the other finding
    frng = _rng(seed, _STREAM_SHAPE)
    f_lob = frng.uniform(0, 2 * np.pi, size=3)
    f_patch = np.clip(_smooth_field(frng, (n, n), 6.0 / _CXR_MM_PER_PX), -2.5, 2.5)
    f_tex = _smooth_field(frng, (n, n), 1.5 / _CXR_MM_PER_PX)
    if lesion.kind == "nodule":
        theta = np.arctan2(dy, dx)
        lob = 1.0 + lesion.irregularity * (0.6 * np.cos(3 * theta + f_lob[0]) + 0.4 * np.cos(5 * theta + f_lob[1]))
        t = np.clip(1.0 - (r_px / (R * lob)) ** 2, 0.0, 1.0)
        dens = np.sqrt(t)  # projected thickness of a ball
        dens = ndi.gaussian_filter(dens, 0.6, mode="constant", truncate=3.0)
    else:
        rho = r_px / R + lesion.irregularity * f_patch
        edge = 0.6  # diffuse margin (in units of R)
        w = _smoothstep((1.0 + edge / 2 - rho) / edge)
        soft_lungs = ndi.gaussian_filter(lungs.astype(np.float64), 3.0, truncate=3.0)
        dens = w * soft_lungs * np.clip(0.75 + 0.25 * f_tex, 0.3, 1.2)
    dens[r_px > lesion.support_px] = 0.0
    return dens * lesion.amplitude


def render_cxr_case(params: CXRCaseParams, size: int = CXR_CLASSIFIER_SIZE, base: np.ndarray | None = None):
    """Render ``params`` at ``size x size``: augment, add findings, resize, gamma/contrast, noise."""
    base = load_base_cxr(CXR_BASE_SIZE) if base is None else np.asarray(base, np.float32)
    n = CXR_BASE_SIZE
    mat, off = _cxr_affine(params, n)
    img = ndi.affine_transform(np.asarray(base, np.float64), mat, offset=off, order=1, mode="reflect")
    lungs = None
    for lesion in (params.nodule, params.opacity):
        if lesion is None:
            continue
        if lungs is None:
            lungs = _augmented_lung_mask(params, base)
        dens = _lesion_density(lesion, n, params.seed, lungs)
        img = img + dens * (1.0 - img)  # denser tissue: move towards white
    img = np.clip(_resize2d(img, (size, size)), 0.0, 1.0)
    img = np.clip(params.contrast * (img**params.gamma - 0.5) + 0.5 + params.brightness, 0.0, 1.0)
    noise = _rng(params.seed, _STREAM_NOISE).standard_normal((size, size))
    img = np.clip(img + params.noise_sigma * noise, 0.0, 1.0)
    return img.astype(np.float32), params.labels


def make_cxr_case(
    seed: int, size: int = CXR_CLASSIFIER_SIZE, base: np.ndarray | None = None, findings: dict | None = None
):
    """One chest radiograph case for the multi-label classifier.

    Parameters
    ----------
    seed : int
        Held-out cases use 1..24, training uses >= :data:`TRAIN_SEED_START`.
    size : int
        Output side in pixels (default :data:`CXR_CLASSIFIER_SIZE` = 256).
    base : np.ndarray, optional
        The 512 x 512 base radiograph; default :func:`load_base_cxr` (needs ``pydicom-data``).
        Pass ``read_base_cxr_png("sample_data/cxr/chest_pa.png")`` to work without it
        (identical to within the 16-bit quantisation for the shipped seeds; tested).
    findings : dict, optional
        Force findings on/off, e.g. ``{"opacity": False}``; see :func:`sample_cxr_params`.

    Returns
    -------
    image : np.ndarray
        float32 ``size x size`` in [0, 1], bright = dense.
    labels : dict[str, int]
        ``{"nodule": 0/1, "opacity": 0/1}``.
    """
    params = sample_cxr_params(seed, base, findings)
    return render_cxr_case(params, size=size, base=base)
