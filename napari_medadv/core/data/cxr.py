"""Deterministic chest radiograph phantoms for the demo classifier (the glioma MR cases are in
:mod:`.glioma`).

They start from the one real PA chest radiograph in ``pydicom-data`` (NEMA WG04
``RG1_UNCR.dcm``, 15-bit MONOCHROME1 computed radiography, a file inside the wheel, never
downloaded) and derive augmented variants with synthetic "nodule" and "opacity" findings for a
multi-label classifier.

Determinism: every random draw comes from its own stream (:mod:`.seeds`); the same seed and
package versions give identical arrays. Held-out cases use :data:`~.seeds.CXR_HELDOUT_SEEDS`.

This module must not import napari, qtpy or magicgui. ``pydicom``, ``imageio`` and matplotlib's
geometry are imported lazily, only by the functions that need them.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .fields import smooth_field, smoothstep
from .seeds import STREAM_NOISE, STREAM_PARAMS, STREAM_SHAPE, stream_rng

__all__ = [
    "CXR_BASE_SIZE",
    "CXR_CLASSIFIER_SIZE",
    "CXR_FINDINGS",
    "CXRCaseParams",
    "CXRLesion",
    "cxr_lung_mask",
    "load_base_cxr",
    "make_cxr_case",
    "read_base_cxr_png",
    "render_cxr_case",
    "sample_cxr_params",
    "write_base_cxr_png",
]

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
    """Draw augmentation and finding parameters for ``seed`` (stream ``STREAM_PARAMS``).

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
    rng = stream_rng(seed, STREAM_PARAMS)
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
    frng = stream_rng(seed, STREAM_SHAPE)
    f_lob = frng.uniform(0, 2 * np.pi, size=3)
    f_patch = np.clip(smooth_field(frng, (n, n), 6.0 / _CXR_MM_PER_PX), -2.5, 2.5)
    f_tex = smooth_field(frng, (n, n), 1.5 / _CXR_MM_PER_PX)
    if lesion.kind == "nodule":
        theta = np.arctan2(dy, dx)
        lob = 1.0 + lesion.irregularity * (0.6 * np.cos(3 * theta + f_lob[0]) + 0.4 * np.cos(5 * theta + f_lob[1]))
        t = np.clip(1.0 - (r_px / (R * lob)) ** 2, 0.0, 1.0)
        dens = np.sqrt(t)  # projected thickness of a ball
        dens = ndi.gaussian_filter(dens, 0.6, mode="constant", truncate=3.0)
    else:
        rho = r_px / R + lesion.irregularity * f_patch
        edge = 0.6  # diffuse margin (in units of R)
        w = smoothstep((1.0 + edge / 2 - rho) / edge)
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
    noise = stream_rng(params.seed, STREAM_NOISE).standard_normal((size, size))
    img = np.clip(img + params.noise_sigma * noise, 0.0, 1.0)
    return img.astype(np.float32), params.labels


def make_cxr_case(
    seed: int, size: int = CXR_CLASSIFIER_SIZE, base: np.ndarray | None = None, findings: dict | None = None
):
    """One chest radiograph case for the multi-label classifier.

    Parameters
    ----------
    seed : int
        Held-out cases use 1..24, training uses >= :data:`~.seeds.TRAIN_SEED_START`.
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
