"""Physics-based MR artifacts (torchio) as perturbation sources beside the attacks.

Liu et al. 2021 close with the open question whether segmentation networks are as fragile to
natural MR corruptions (motion, other acquisition artifacts, noise) as to adversarial noise.
The six sources here put those corruptions in the same registry as the attacks, so the CLI
(``medadv attack --attack motion --severity 0.5``), the GUI dropdown and the study grid offer
them with no other edit, and :mod:`..matching` can set any of them to the PSNR/SSIM of an
attack.

====================  ===========  ===========================================================
registry name         torchio      ``severity`` s ∈ [0, 1] → torchio parameters
====================  ===========  ===========================================================
``motion``            Motion       2 poses (torchio's ``num_transforms`` default) with rotations
                                   ``10° · a`` and translations ``10 mm · b``, ``a, b ~ U(-1, 1)``
                                   per axis fixed by the seed (torchio's default ranges), held
                                   for the first ``c_A · s`` and last ``c_B · s`` of the k-space
                                   lines, ``c ~ U(0.3, 0.45)`` per seed: s is the fraction of the
                                   scan spent out of position (up to 60-90 %). 2-D: in-plane.
``ghosting``          Ghosting     ``num_ghosts`` ∈ {4..10} and the phase-encode ``axis`` drawn
                                   by the seed (torchio's default ranges); ``intensity = s``
                                   (s = 1: every n-th k-space plane removed); central plane
                                   restored (torchio's ``restore=None``).
``spike``             Spike        one spike at a seeded k-space position; ``intensity = 2 s``
                                   (ratio to the spectrum's maximum; torchio's default range is
                                   1-3).
``biasfield``         BiasField    order-3 polynomial (torchio's default); coefficients
                                   ``0.5 · s · c`` with ``c ~ U(-1, 1)`` fixed by the seed
                                   (s = 1: torchio's default ``coefficients=0.5``). The constant
                                   term is 0: a global gain is not a bias *field*.
``gaussnoise``        Noise        additive Gaussian noise, ``std = 0.1 · s`` of each channel's
                                   range (PSNR ≈ 20 dB at s = 1 on the whole image), a fixed
                                   noise field per seed, independent per channel (each contrast
                                   is its own acquisition). Named apart from the L∞ ``noise``.
``blur``              Blur         isotropic Gaussian, ``std = 4 mm · s`` along every axis
                                   (converted to voxels with the image spacing by torchio);
                                   deterministic, the seed is unused.
====================  ===========  ===========================================================

Every mapping scales a fixed, seeded random structure by s, so for a given seed the image
error grows with s: PSNR falls monotonically as severity rises (tested), which is what the
matched-quality search needs. ``severity = 0`` returns the image unchanged.

Why torchio's *deterministic* transforms (``Motion``, ``Ghosting``, ...) rather than calling
``RandomMotion`` etc.: the ``Random*`` classes draw every parameter, amplitudes included, from
torch's *global* generator on each call and then delegate to exactly these deterministic
classes. Drawing the random structure here from the attack's own seeded generator keeps the
physics identical while making a run (a) deterministic under ``seed`` without touching the
global RNG, (b) monotone in severity, and (c) coherent across channels — one physical event
(the same head motion, the same spike) applied to every contrast of a case, as a scanner
would. MONAI's ``RandKSpaceSpikeNoise``/``RandBiasField``/``RandGibbsNoise`` cover a subset
(no motion, no ghosting) and also sample amplitudes internally, so torchio is the better fit.

Intensities: each channel is mapped to ``u = (x - lo) / (hi - lo)`` (its valid range, see
:mod:`..intensity`; by default the clean image's observed ``[min, max]``), the artifact is
applied to ``u`` and mapped back. The amplitudes above are therefore fractions of each
channel's range and work for raw magnitude images and z-scored MR alike; for a magnitude
image with a zero background ``u`` is the MR signal up to a scale, so multiplicative (bias
field) and k-space (spike, ghosting, motion) artifacts act on the signal as they physically do.

Region of interest: the result is ``x + roi · (artifact(x) - x)``. For skull-stripped images
(the pipeline's default ROI is the non-zero brain support) this is exactly "artifact at
acquisition, then the same skull stripping": the background stays 0, as it would in the
released data. Without a ROI (``--perturb-background``) the artifact covers the whole field of
view. Results are clamped to the valid range like every other source (so PSNR uses the same
peak for all of them); the fraction of voxels that clamping touched is reported in
``AttackResult.extra["clamped_fraction"]``.

Geometry: motion translations and blur widths are in mm. The spacing comes from the
``spacing`` argument, else from the model's ``input_spacing`` (set by the pipeline from the
image geometry), else 1 mm. Shapes and dtypes are kept; labels are never read or changed.

Tensor layout: ``B C H W`` (2-D) or ``B C D H W`` (3-D), any number of channels.

Example::

    >>> from napari_medadv.core.attacks import ATTACKS
    >>> moved = ATTACKS.create("motion", model, severity=0.5, seed=0, spacing=(2.5, 2.5, 2.5))(x)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from .base import Attack, AttackStep, Param, _Context

SEVERITY_HELP = "artifact strength from 0 (none) to 1 (severe); see `medadv attacks` / the class docstring"


def check_severity(value, name: str = "severity") -> float:
    """``value`` as a float in [0, 1], or a ``ValueError`` naming ``name`` and the valid range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number in [0, 1] (0 = no artifact, 1 = severe), got {value!r}")
    v = float(value)
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (0 = no artifact, 1 = severe), got {v}")
    return v


def _check_spacing(spacing) -> tuple[float, ...]:
    try:
        sp = tuple(float(s) for s in spacing)
    except TypeError:
        raise ValueError(f"spacing must be a sequence of voxel sizes in mm, got {spacing!r}") from None
    if len(sp) not in (2, 3) or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be 2 or 3 positive voxel sizes in mm, got {spacing!r}")
    return sp


class MRArtifact(Attack):
    """Base of the torchio artifact sources: one ``severity`` in [0, 1] and a ``seed``.

    Subclasses define :meth:`_draw` (the seeded, severity-independent random structure) and
    :meth:`_torchio` (the deterministic torchio transform for a severity). Gradient-free: the
    model is never called (one forward only when ``track_metrics`` is set).

    Args:
        model: the model the perturbed images are meant for (checked for its channel count;
            its ``input_spacing`` is used when ``spacing`` is not given).
        severity: 0 (identity) to 1 (severe); mapping in the module docstring.
        spacing: voxel size in mm per spatial axis (``D H W`` or ``H W``).
        data_range, roi, seed, track_metrics, loss, activation: as for :class:`~.base.Attack`.
    """

    gradient_free = True
    targeted = "no"
    kind = "artifact"
    params: ClassVar[tuple[Param, ...]] = (Param("severity", float, 0.5, SEVERITY_HELP, 0.0, 1.0),)
    #: name of the torchio transform class applied
    torchio_transform: ClassVar[str] = ""

    def __init__(self, model, severity: float = 0.5, *, spacing=None, data_range=None, roi=None,
                 seed: int | None = None, track_metrics: bool = False, loss=None, activation: str = "auto"):
        # eps = 1: no L∞ budget — the result only stays inside the valid range (and the roi)
        super().__init__(model, 1.0, loss=loss, activation=activation, data_range=data_range, roi=roi,
                         seed=seed, track_metrics=track_metrics)
        self.severity = check_severity(severity)
        self.spacing = None if spacing is None else _check_spacing(spacing)

    def get_params(self) -> dict:
        out = super().get_params()
        out["torchio_transform"] = self.torchio_transform
        return out

    # ------------------------------------------------------------------ engine hooks
    def _spacing_for(self, n_spatial: int) -> tuple[float, ...]:
        sp = self.spacing if self.spacing is not None else getattr(self.model, "input_spacing", None)
        if sp is None:
            return (1.0,) * n_spatial
        sp = _check_spacing(sp)
        if len(sp) != n_spatial:
            raise ValueError(f"spacing {sp} has {len(sp)} values but the images have {n_spatial} spatial axes")
        return sp

    def _steps(self, ctx: _Context):
        x = ctx.x
        n_spatial = x.ndim - 2
        spacing = self._spacing_for(n_spatial)
        # one integer per sample from the attack's generator: the structure depends on the seed only
        seeds = torch.randint(0, 2**62, (x.shape[0],), generator=ctx.rng, device=ctx.rng.device).tolist()
        self._applied: list[dict] = []
        if self.severity == 0.0:
            adv = x.clone()
        else:
            lo, width = ctx.range.lo, ctx.range.width
            width = torch.where(width > 0, width, torch.ones_like(width))
            u = ((x - lo) / width).detach().cpu()
            out = torch.empty_like(u)
            for i in range(x.shape[0]):
                draw = self._draw(np.random.default_rng(int(seeds[i])), n_spatial == 2)
                transform, applied = self._torchio(draw, self.severity, spacing, n_spatial == 2)
                out[i] = _apply_torchio(transform, u[i], spacing)
                self._applied.append(applied)
            adv = lo + width * out.to(x.device)
        unclamped = adv if ctx.roi is None else x + (adv - x) * ctx.roi
        adv = ctx.project(adv)
        self._clamped = float((adv != unclamped).flatten(1).float().mean(1).mean())
        yield AttackStep(1, 1, None, adv, {})
        return adv

    def _finish(self, ctx: _Context, adv: torch.Tensor, history: list[dict]) -> dict:
        if self.track_metrics:
            with torch.no_grad():
                out = ctx.forward(adv)
            history.append({"step": 1, "loss": None, **self._step_metrics(ctx, adv, out)})
        return {"severity": self.severity, "torchio_transform": self.torchio_transform,
                "torchio_params": self._applied, "clamped_fraction": self._clamped}

    # ------------------------------------------------------------------ for subclasses
    def _draw(self, rng: np.random.Generator, is_2d: bool) -> dict:
        """The random structure of one artifact event (independent of severity)."""
        raise NotImplementedError  # abstract: every registered artifact overrides it

    def _torchio(self, draw: dict, severity: float, spacing, is_2d: bool) -> tuple[Any, dict]:
        """``(torchio transform, JSON-ready parameters)`` for this event at ``severity``."""
        raise NotImplementedError  # abstract: every registered artifact overrides it


# torchio works on C × 3 spatial axes with an affine. A 2-D image H × W is laid out as
# H × 1 × W: k-space lines of torchio's motion model run along its *last* axis, which must be
# an in-plane axis for a 2-D image to show motion artifacts (H × W × 1 would give none).
_PLANE_2D = (0, 2)  # torchio axes that hold a 2-D image's H and W


def _apply_torchio(transform, u: torch.Tensor, spacing: tuple[float, ...]) -> torch.Tensor:
    """Apply a deterministic torchio transform to one ``C *spatial`` tensor (CPU, float32)."""
    import torchio as tio

    spatial = tuple(u.shape[1:])
    if len(spatial) == 2:
        t = u.reshape(u.shape[0], spatial[0], 1, spatial[1])
        sp = (spacing[0], 1.0, spacing[1])
    else:
        t, sp = u, tuple(spacing)
    affine = np.diag([*sp, 1.0])
    subject = tio.Subject(image=tio.ScalarImage(tensor=t.float().contiguous(), affine=affine))
    with torch.random.fork_rng(devices=[]):  # torchio draws its probability check from the global RNG
        result = transform(subject)["image"].data
    return result.reshape(u.shape).to(u.dtype)


def _f(v) -> list:
    return np.asarray(v, dtype=float).round(6).tolist()


class MRMotion(MRArtifact):
    """Rigid head motion during the acquisition (torchio ``Motion``; Shaw et al. 2019).

    torchio's model fills k-space segments (along the last axis) from copies of the image in
    different poses. Here the patient holds a seeded pose A (up to 10°, 10 mm per axis:
    torchio's defaults) while the first ``c_A · s`` of the lines are acquired and pose B during
    the last ``c_B · s``, and lies still in between, where the k-space centre is acquired
    (``c_A, c_B ~ U(0.3, 0.45)`` fixed by the seed). Severity is thus the fraction of the scan
    spent out of position: the corrupted lines grow as nested sets, so the error grows
    monotonically with s (scaling the *amplitude* instead is not monotone: the error saturates
    within a few voxels of displacement and then oscillates). Resolution: one k-space line,
    i.e. PSNR is a non-increasing step function of s.
    """

    name = "motion"
    label = "MR motion (torchio)"
    description = ("k-space motion artifact: 2 seeded poses (up to 10°, 10 mm) held for up to 90 % "
                   "of the scan at severity 1.")
    torchio_transform = "Motion"
    max_degrees: ClassVar[float] = 10.0
    max_translation_mm: ClassVar[float] = 10.0
    fraction_range: ClassVar[tuple[float, float]] = (0.3, 0.45)

    def _draw(self, rng, is_2d):
        rot = self.max_degrees * rng.uniform(-1.0, 1.0, (2, 3))
        trans = self.max_translation_mm * rng.uniform(-1.0, 1.0, (2, 3))
        if is_2d:  # image in torchio's (0, 2) plane: rotate about axis 1, translate in-plane
            rot[:, [0, 2]] = 0.0
            trans[:, 1] = 0.0
        return {"rot": rot, "trans": trans, "fractions": rng.uniform(*self.fraction_range, 2)}

    def _torchio(self, draw, severity, spacing, is_2d):
        import torchio as tio

        fa, fb = draw["fractions"] * severity
        # torchio: segment [0, t1) from pose A, [t1, t2) from the original (holds the centre,
        # because t1 <= 0.5 < t2), [t2, 1) from pose B
        times = np.array([fa, 1.0 - fb])
        t = tio.Motion(degrees=draw["rot"], translation=draw["trans"], times=times, image_interpolation="linear")
        return t, {"degrees": _f(draw["rot"]), "translation_mm": _f(draw["trans"]), "times": _f(times),
                   "fraction_out_of_position": round(float(fa + fb), 6)}


class MRGhosting(MRArtifact):
    """Periodic (e.g. pulsatile-flow, respiratory) ghosts along the phase-encode axis."""

    name = "ghosting"
    label = "MR ghosting (torchio)"
    description = "k-space ghosting: 4-10 ghosts along a seeded phase-encode axis, planes removed at severity 1."
    torchio_transform = "Ghosting"

    def _draw(self, rng, is_2d):
        axes = _PLANE_2D if is_2d else (0, 1, 2)
        return {"num_ghosts": int(rng.integers(4, 11)), "axis": int(axes[rng.integers(len(axes))])}

    def _torchio(self, draw, severity, spacing, is_2d):
        import torchio as tio

        t = tio.Ghosting(num_ghosts=draw["num_ghosts"], axis=draw["axis"], intensity=float(severity), restore=None)
        return t, {"num_ghosts": draw["num_ghosts"], "axis": _torchio_axis_to_image_axis(draw["axis"], is_2d),
                   "intensity": float(severity)}


class MRSpike(MRArtifact):
    """A spike in k-space (herringbone / corduroy stripes)."""

    name = "spike"
    label = "MR spike (torchio)"
    description = "k-space spike: stripes of amplitude up to 2× the spectrum maximum ratio at severity 1."
    torchio_transform = "Spike"
    max_intensity: ClassVar[float] = 2.0

    def _draw(self, rng, is_2d):
        pos = rng.uniform(0.0, 1.0, (1, 3))
        if is_2d:
            pos[:, 1] = 0.5  # the singleton axis: its only index (the centre)
        return {"positions": pos}

    def _torchio(self, draw, severity, spacing, is_2d):
        import torchio as tio

        intensity = self.max_intensity * severity
        t = tio.Spike(spikes_positions=draw["positions"], intensity=intensity)
        return t, {"spikes_positions": _f(draw["positions"]), "intensity": intensity}


class MRBiasField(MRArtifact):
    """Smooth multiplicative intensity inhomogeneity (receive-coil bias field)."""

    name = "biasfield"
    label = "MR bias field (torchio)"
    description = "multiplicative order-3 polynomial bias field, coefficients up to 0.5 at severity 1."
    torchio_transform = "BiasField"
    order: ClassVar[int] = 3
    max_coefficient: ClassVar[float] = 0.5

    def _draw(self, rng, is_2d):
        coeffs, order = [], self.order
        for i in range(order + 1):  # torchio's coefficient order (x, y, z exponents)
            for j in range(order + 1 - i):
                for k in range(order + 1 - (i + j)):
                    c = rng.uniform(-1.0, 1.0)
                    if i + j + k == 0 or (is_2d and j > 0):
                        c = 0.0  # no global gain; 2-D: no terms along the singleton axis
                    coeffs.append(c)
        return {"coefficients": np.array(coeffs)}

    def _torchio(self, draw, severity, spacing, is_2d):
        import torchio as tio

        coefficients = (self.max_coefficient * severity * draw["coefficients"]).tolist()
        t = tio.BiasField(coefficients=coefficients, order=self.order)
        return t, {"coefficients": _f(coefficients), "order": self.order}


class MRGaussianNoise(MRArtifact):
    """Additive Gaussian (thermal) noise, a fixed field per seed scaled by severity."""

    name = "gaussnoise"
    label = "MR Gaussian noise (torchio)"
    description = "additive Gaussian noise, std up to 10 % of each channel's range at severity 1."
    torchio_transform = "Noise"
    max_std: ClassVar[float] = 0.1

    def _draw(self, rng, is_2d):
        return {"noise_seed": int(rng.integers(0, 2**31 - 1))}

    def _torchio(self, draw, severity, spacing, is_2d):
        import torchio as tio

        std = self.max_std * severity
        t = tio.Noise(mean=0.0, std=std, seed=draw["noise_seed"])
        return t, {"mean": 0.0, "std_fraction_of_range": std, "noise_seed": draw["noise_seed"]}


class MRBlur(MRArtifact):
    """Isotropic Gaussian blur in mm (e.g. a lower effective resolution)."""

    name = "blur"
    label = "MR blur (torchio)"
    description = "isotropic Gaussian blur, std up to 4 mm at severity 1 (deterministic)."
    torchio_transform = "Blur"
    max_std_mm: ClassVar[float] = 4.0

    def _draw(self, rng, is_2d):
        return {}

    def _torchio(self, draw, severity, spacing, is_2d):
        import torchio as tio

        s = self.max_std_mm * severity
        std = (s, 0.0, s) if is_2d else (s, s, s)
        return tio.Blur(std=std), {"std_mm": s}


def _torchio_axis_to_image_axis(axis: int, is_2d: bool) -> int:
    """Spatial axis of the caller's image (0 = first spatial axis) for a torchio axis."""
    return _PLANE_2D.index(axis) if is_2d else axis


ARTIFACTS: tuple[type[MRArtifact], ...] = (MRMotion, MRGhosting, MRSpike, MRBiasField, MRGaussianNoise, MRBlur)
