"""Base class shared by every attack, in the spirit of torchattacks' ``Attack``.

What every attack gets from here:

* the model is put in eval mode for the attack and every module's previous mode is restored;
* the device is taken from the model; results come back on the caller's device and dtype;
* gradients are taken with ``torch.autograd.grad`` on the input only, so parameter ``.grad``
  never accumulates;
* the caller's tensor is never modified (it is cloned and detached);
* ε is a fraction of each sample's per-channel intensity range (:mod:`..intensity`) — unlike
  torchattacks, inputs need not lie in [0, 1] (z-scored MR works as is);
* every iterate is projected onto the ε-ball (L∞, per channel, in native units), restricted to
  an optional region of interest, and clamped to the valid intensity range;
* iterative attacks are generators: :meth:`Attack.iterate` yields one :class:`AttackStep` per
  step, and :meth:`Attack.run` accepts ``callback`` / ``should_stop`` so a GUI worker or a CLI
  progress bar can follow and cancel without this module knowing about either.

Tensor layout: images ``B C H W`` (2-D) or ``B C D H W`` (3-D), any number of channels.
"""

from __future__ import annotations

import math
import secrets
import weakref
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..intensity import DataRangeSpec, IntensityRange, compute_range
from . import _slabs
from ..losses import LOSSES, LossFn, SoftDiceLoss, as_dense_target, class_indices, make_loss
from ..metrics import channel_argmax, dice_from_counts, difference_sums, foreground_overlap, psnr_channels_fast

StepCallback = Callable[["AttackStep"], Any]
StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class Param:
    """One tunable argument of an attack, described once for the CLI, the GUI and the study."""

    name: str
    kind: type
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None


def loss_param(default: str = "auto") -> Param:
    """The attack-loss choice of gradient attacks, from :data:`~napari_medadv.core.losses.LOSSES`
    (``auto``: soft Dice for segmentation, CE/BCE for classifiers): one registry entry, so the
    GUI form, the study grid and the record list every loss — OL included — with no other edit."""
    return Param("loss", str, default, "attack loss: auto, " + ", ".join(LOSSES) + " (ol: Ghamizi's ordinal loss)",
                 choices=("auto", *LOSSES))


@dataclass
class AttackStep:
    """What an iterative attack reports after each step (cheap: no extra forward pass).

    ``loss`` is the mean attack loss evaluated at the iterate *before* this step's update;
    ``metrics`` holds attack-specific numbers (e.g. PSNR, Dice vs reference, L0, queries).
    ``adversarial`` is the current iterate on the model's device: read it, don't modify it.
    ``evaluated`` / ``output``: the iterate this step ran the model on (the one before the update)
    and the model's (detached) output there, when the attack has them — an image and its
    prediction that belong together, for showing an attack while it runs at no extra forward.
    """

    step: int
    n_steps: int
    loss: float | None
    adversarial: torch.Tensor
    metrics: dict = field(default_factory=dict)
    restart: int = 0
    evaluated: torch.Tensor | None = field(default=None, repr=False)
    output: torch.Tensor | None = field(default=None, repr=False)
    #: :func:`~..metrics.difference_sums` of ``evaluated`` against the clean images, when the
    #: step's tracked metrics computed them (a frame of this iterate reuses them for its readouts)
    sums: tuple | None = field(default=None, repr=False)

    @property
    def fraction(self) -> float:
        return self.step / self.n_steps if self.n_steps else 1.0


@dataclass
class AttackResult:
    """Everything an attack produced. Tensors are on the caller's device and dtype."""

    attack: str
    clean: torch.Tensor
    adversarial: torch.Tensor
    eps: float
    eps_native: list[list[float]]
    params: dict
    history: list[dict] = field(default_factory=list)
    n_forward: int = 0
    n_backward: int = 0
    cancelled: bool = False
    success: list[bool] | None = None
    extra: dict = field(default_factory=dict)
    # the model's output at ``adversarial`` when the attack already computed it (the final forward
    # of per-iteration tracking), so callers need not run it again; None otherwise
    output: torch.Tensor | None = field(default=None, repr=False)
    # Σ_c |∂loss/∂x_c| at the clean image (``B *spatial``, float32) when the attack was asked to keep
    # it (``keep_sensitivity``) and its own first gradient was taken there: the vulnerability map
    # at no extra backward (:mod:`napari_medadv.core.vulnerability`); None otherwise
    sensitivity: torch.Tensor | None = field(default=None, repr=False)

    @property
    def perturbation(self) -> torch.Tensor:
        return self.adversarial - self.clean

    def summary(self) -> dict:
        """JSON-ready summary of the run (no tensors)."""
        return {
            "attack": self.attack,
            "eps": self.eps,
            "eps_native": self.eps_native,
            "params": self.params,
            "n_forward": self.n_forward,
            "n_backward": self.n_backward,
            "cancelled": self.cancelled,
            "success": self.success,
            "history": self.history,
            **self.extra,
        }


def _check_finite_number(name: str, value, *, minimum: float | None = None, strict: bool = False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if minimum is not None and (v < minimum or (strict and v == minimum)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {v}")
    return v


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def expected_in_channels(model: nn.Module) -> int | None:
    """Input channels the model takes: its own answer (a wrapper that selects the network's inputs
    from an image's channels says how many image channels it reads), else those of the first
    convolution, when the model has one."""
    own = getattr(model, "expected_image_channels", None)
    if callable(own) and own() is not None:
        return int(own())
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m.in_channels
        if isinstance(m, nn.Linear):
            return None  # flattening models: channel count is not recoverable
    return None


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module):
    """Put every module in eval mode and restore each one's previous mode afterwards."""
    training = [m for m in model.modules() if m.training]
    if not training:  # the usual case (already in eval mode): nothing to switch or restore
        yield model
        return
    model.eval()
    try:
        yield model
    finally:
        for m in training:
            m.training = True


class _Context:
    """Per-call state: the clean input, its range, the reference/target and the loss.

    Labels/targets that depend on the model output (pseudo-labels from the clean prediction,
    a constant target label map) are resolved from the *first* forward pass at the clean
    image, so FGSM never pays an extra forward for them.
    """

    def __init__(self, attack: Attack, images: torch.Tensor, labels, target):
        self.attack = attack
        self.x = images
        self.rng = torch.Generator(device=images.device)
        # no seed: draw one from the OS, never from (or into) torch's global generator
        self.rng.manual_seed(attack.seed if attack.seed is not None else secrets.randbits(63))
        self.range: IntensityRange = compute_range(images, attack.data_range)
        self.eps = self.range.eps_native(attack.eps)
        self.roi = attack._roi_for(images)
        self._labels = labels
        self._target = target
        self._ref: torch.Tensor | None = None
        self._dense: tuple | None = None  # (output shape/dtype/device, the reference one-hot), see loss
        self.loss_fn: LossFn | None = attack._loss_spec if callable(attack._loss_spec) else None
        self.n_forward = 0
        self.n_backward = 0
        self.clean_output: torch.Tensor | None = None
        self.final_output: torch.Tensor | None = None  # output at the result, when computed
        self._channel_ranges: torch.Tensor | None = None
        self._ref_fg: tuple | None = None  # (the reference's foreground, its voxel count per sample)
        self._sums: tuple | None = None  # (weak ref to an iterate, its difference_sums): the latest step's
        self.init: torch.Tensor | None = None  # a warm start (projected), see Attack.iterate
        self.sensitivity: torch.Tensor | None = None  # see note_gradient

    def start(self) -> torch.Tensor:
        """The first iterate: the warm start when one was given, else the clean image."""
        return self.init if self.init is not None else self.x

    def channel_ranges(self) -> torch.Tensor:
        """Each sample's and channel's max - min of the clean image (1 where constant), ``B C``,
        float64: the ranges metrics.json's PSNR uses (not the attack's ε range, which a model may
        declare)."""
        if self._channel_ranges is None:
            flat = self.x.detach().flatten(2)
            rng = (flat.amax(2) - flat.amin(2)).double()
            self._channel_ranges = torch.where(rng > 0, rng, torch.ones_like(rng))
        return self._channel_ranges

    def reference_foreground(self, ref: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """The foreground (non-zero) of the reference label map and its size per sample, once per
        run: the reference does not change between steps."""
        if self._ref_fg is None or self._ref_fg[0] is not ref:
            fg = ref != 0
            self._ref_fg = (ref, fg, [int(torch.count_nonzero(f)) for f in fg])
        return self._ref_fg[1], self._ref_fg[2]

    def difference_sums(self, adv: torch.Tensor) -> tuple:
        """:func:`~..metrics.difference_sums` of an iterate against the clean images, kept for the
        step that reports this iterate (:attr:`AttackStep.sums`)."""
        if self._sums is None or self._sums[0]() is not adv:
            # a weak reference: the iterate is not kept alive for this (144 MB at BraTS size)
            self._sums = (weakref.ref(adv), difference_sums(self.x, adv))
        return self._sums[1]

    def sums_of(self, adv: torch.Tensor | None) -> tuple | None:
        """The sums :meth:`difference_sums` computed for ``adv`` (this very tensor), if it did."""
        if adv is None or self._sums is None or self._sums[0]() is not adv:
            return None
        return self._sums[1]

    # -- projection -----------------------------------------------------------------------
    def project(self, adv: torch.Tensor) -> torch.Tensor:
        """Onto the ε-ball around the clean image (inside the ROI) and the valid range."""
        # fused over cache-sized slabs on CPU, bit for bit the expression (see _slabs.project)
        return _slabs.project(adv, self.x, self.eps, self.roi, self.range.lo, self.range.hi)

    # -- reference labels / targets ---------------------------------------------------------
    def reference(self, output: torch.Tensor) -> torch.Tensor:
        """What the loss compares the output with (labels, target or the clean prediction)."""
        if self._ref is None:
            self._ref = self.attack._resolve_reference(output, self._labels, self._target)
        return self._ref

    def loss(self, output: torch.Tensor) -> torch.Tensor:
        ref = self.reference(output)
        if self.loss_fn is None:
            self.loss_fn = make_loss(self.attack._loss_spec, output, ref, self.attack.activation)
        return self.loss_fn(output, self._loss_target(ref, output))

    def _loss_target(self, ref: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The reference as soft Dice takes it, one-hot encoded once per run: the loss would check
        and encode the label map at every call (an int64 one-hot of the output's size: 0.1-0.2 s of
        each step at BraTS size). The same tensor the loss builds, so the same loss and gradient."""
        if not isinstance(self.loss_fn, SoftDiceLoss) or ref.is_floating_point() or output.ndim < 3:
            return ref
        key = (tuple(output.shape), output.dtype, output.device)
        if self._dense is None or self._dense[0] != key:
            self._dense = (key, as_dense_target(ref, output))
        return self._dense[1]

    # -- model calls ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.n_forward += x.shape[0]
        return self.attack.model(x)

    def note_gradient(self, at: torch.Tensor, grad: torch.Tensor) -> None:
        """Keep Σ_c |grad| when ``at`` is the clean image itself (an attack's first gradient without a
        random or warm start) and the attack was asked to (``keep_sensitivity``): one reduction to
        ``B *spatial`` float32, instead of a second backward for the vulnerability map."""
        if at is self.x and self.sensitivity is None and self.attack.keep_sensitivity:
            self.sensitivity = grad.detach().abs().sum(1, dtype=torch.float32)

    def loss_and_grad(self, adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample loss, input gradient and (detached) output at ``adv``."""
        at = adv
        adv = adv.detach().requires_grad_(True)
        with torch.enable_grad():
            output = self.forward(adv)
            per_sample = self.loss(output)
            (grad,) = torch.autograd.grad(per_sample.sum(), adv)
        self.n_backward += adv.shape[0]
        self.note_gradient(at, grad)
        if self.clean_output is None:
            self.clean_output = output.detach()
        return per_sample.detach(), grad, output.detach()


class Attack:
    """Base class: ``Attack(model, eps)(images, labels) -> adversarial images``.

    Args:
        model: a ``torch.nn.Module`` returning logits ``B K`` (classifier) or ``B K *spatial``
            (segmentation).
        eps: L∞ budget as a fraction of each channel's intensity range (0.05 = 5 %).
        loss: ``"dice"``, ``"ce"``, ``"bce"``, ``"mse"``, a callable ``(output, target) -> (B,)``
            or ``None`` for the automatic choice (soft Dice for segmentation, CE/BCE otherwise).
        activation: output activation the loss applies: ``"softmax"``, ``"sigmoid"``,
            ``"none"`` (the model already outputs probabilities) or ``"auto"``.
        data_range: how to get each channel's valid range; see :mod:`..intensity`.
        roi: optional mask ``*spatial`` / ``B 1 *spatial`` (non-zero = may be perturbed).
        seed: seed for random starts / random search (``None``: nondeterministic).
        track_metrics: record PSNR and Dice-to-reference per step in the history (costs one
            extra forward at the end of iterative attacks).

    Labels: class indices (``B`` / ``B *spatial``) or float targets shaped like the output. With
    ``labels=None`` untargeted attacks use the model's own clean prediction as the reference.
    """

    name: ClassVar[str] = "attack"
    label: ClassVar[str] = "Attack"
    description: ClassVar[str] = ""
    gradient_free: ClassVar[bool] = False
    #: "no" (untargeted only), "optional", or "required"
    targeted: ClassVar[str] = "no"
    #: "adversarial" (uses the model), "random" (a noise baseline) or "artifact" (a simulated MR artifact)
    kind: ClassVar[str] = "adversarial"
    #: one forward per ε once prepared (``prepare`` + ``predict_at_eps``): the GUI's live ε slider
    live_eps: ClassVar[bool] = False
    #: ``iterate(..., init=x0)`` starts from ``x0`` (projected onto this ε-ball) instead of the
    #: clean image / a random start: live ε for iterative attacks continues from a nearby result
    warm_start: ClassVar[bool] = False
    #: parameters a kept search can be continued with (``open_search``: DGDE's budget and pixel
    #: target): the Attack dock's live controls for gradient-free attacks
    live_search: ClassVar[tuple[str, ...]] = ()
    #: keep Σ_c |∂loss/∂x_c| of a gradient taken at the clean image (``AttackResult.sensitivity``);
    #: the pipeline sets it on the instance when a vulnerability map is asked for
    keep_sensitivity: bool = False
    params: ClassVar[tuple[Param, ...]] = (
        Param("eps", float, 0.05, "L∞ budget, fraction of the intensity range", 0.0, 1.0),
    )

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.05,
        *,
        loss: str | LossFn | None = None,
        activation: str = "auto",
        data_range: DataRangeSpec = None,
        roi=None,
        seed: int | None = None,
        track_metrics: bool = False,
    ):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.eps = _check_finite_number("eps", eps, minimum=0.0)
        if loss is not None and not callable(loss) and loss != "auto" and loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose {', '.join(LOSSES)} or pass a callable")
        self._loss_spec = loss
        if activation not in ("auto", "softmax", "sigmoid", "none"):
            raise ValueError(f"activation must be auto, softmax, sigmoid or none, got {activation!r}")
        self.activation = activation
        self.data_range = data_range
        self.roi = roi
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self.track_metrics = bool(track_metrics)
        self.last_result: AttackResult | None = None

    # ------------------------------------------------------------------ public API
    def __call__(self, images, labels=None, **kwargs) -> torch.Tensor:
        return self.run(images, labels, **kwargs).adversarial

    def run(
        self,
        images,
        labels=None,
        *,
        target=None,
        callback: StepCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> AttackResult:
        """Run to completion (or until ``should_stop()`` is true) and return the result."""
        gen = self.iterate(images, labels, target=target)
        try:
            while True:
                step = next(gen)
                if callback is not None:
                    callback(step)
                if should_stop is not None and should_stop():
                    gen.send(True)  # ask for a clean stop: returns the last projected iterate
        except StopIteration as stop:
            return stop.value
        finally:
            gen.close()

    def project_start(self, images, init) -> torch.Tensor:
        """Where :meth:`iterate` with ``init`` begins: the warm start projected onto this attack's
        ε-ball around ``images``, its region and the valid range (no model call). Live ε shows this
        iterate with its prediction as the first answer to a slider move."""
        x = self._check_images(images).detach().to(device=model_device(self.model), dtype=torch.float32)
        return self._check_init(init, x, _Context(self, x, None, None))

    def iterate(self, images, labels=None, *, target=None, init=None) -> Generator[AttackStep, bool | None, AttackResult]:
        """Generator form: yields :class:`AttackStep`; ``send(True)`` cancels; returns the result.

        ``init``: a warm start shaped like ``images`` (attacks with ``warm_start``), projected onto
        this attack's ε-ball and the valid range before the first step; the steps then continue
        from it (PGD: instead of its first random start).

        The returned :class:`AttackResult` is also kept as ``self.last_result``.
        """
        x_in = self._check_images(images)
        device = model_device(self.model)
        x = x_in.detach().clone().to(device=device, dtype=torch.float32)
        labels_d = self._check_labels(labels, x)
        target_d = self._check_target(target, x)
        ctx = _Context(self, x, labels_d, target_d)
        if init is not None:
            ctx.init = self._check_init(init, x, ctx)
        history: list[dict] = []
        cancelled = False
        with eval_mode(self.model):
            steps = self._steps(ctx)
            adv = x
            try:
                step = next(steps)
                while True:
                    if step.sums is None:
                        step.sums = ctx.sums_of(step.evaluated)
                    adv = step.adversarial
                    record = {"step": step.step, "loss": step.loss, **step.metrics}
                    if step.restart:
                        record["restart"] = step.restart
                    history.append(record)
                    stop = yield step
                    if stop:
                        cancelled = True
                        break
                    step = steps.send(None)
            except StopIteration as done:
                if done.value is not None:
                    adv = done.value
            finally:
                steps.close()
            adv = ctx.project(adv).detach()
            extra = self._finish(ctx, adv, history)
        result = AttackResult(
            attack=self.name,
            clean=x_in.detach().clone() if isinstance(images, torch.Tensor) else x_in,
            adversarial=adv.to(device=x_in.device, dtype=x_in.dtype),
            eps=self.eps,
            eps_native=ctx.range.eps_native_per_channel(self.eps),
            params=self.get_params(),
            history=history,
            n_forward=ctx.n_forward,
            n_backward=ctx.n_backward,
            cancelled=cancelled,
            success=extra.pop("success", None),
            extra=extra,
            output=ctx.final_output,
            sensitivity=ctx.sensitivity,
        )
        self.last_result = result
        return result

    def get_params(self) -> dict:
        """The attack's parameters as plain values (for record.json / replay)."""
        out = {}
        for p in self.params:
            v = getattr(self, p.name, None)
            out[p.name] = v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
        out["loss"] = self._loss_spec if isinstance(self._loss_spec, (str, type(None))) else repr(self._loss_spec)
        out["activation"] = self.activation
        out["seed"] = self.seed
        out["data_range"] = None if self.data_range is None else repr(self.data_range)
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{p.name}={getattr(self, p.name, None)!r}" for p in self.params)
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ for subclasses
    def _steps(self, ctx: _Context) -> Generator[AttackStep, None, torch.Tensor]:
        raise NotImplementedError  # abstract: every registered attack overrides it

    def _finish(self, ctx: _Context, adv: torch.Tensor, history: list[dict]) -> dict:
        """Optional final bookkeeping (one extra forward only when metrics are tracked)."""
        if self.track_metrics and not self.gradient_free:
            with torch.no_grad():
                out = ctx.forward(adv)
            ctx.final_output = out
            history.append({"step": len(history), "loss": float(ctx.loss(out).mean()),
                            **self._step_metrics(ctx, adv, out)})
        return {}

    def _step_metrics(self, ctx: _Context, adv: torch.Tensor, output: torch.Tensor) -> dict:
        """PSNR of the iterate and hard Dice of its prediction vs the reference (if tracked).

        The same figures as metrics.json's :func:`~..metrics.psnr_channels` and
        :func:`~..metrics.foreground_dice` (tested equal), computed on the tensors where they are:
        float32 passes instead of float64 copies and one-hot masks, so tracking costs little next to
        a step at BraTS size (the Attack dock tracks by default; its run should cost the core's)."""
        if not self.track_metrics:
            return {}
        m = {"psnr": float(np.mean(psnr_channels_fast(ctx.x, adv, ctx.channel_ranges(),
                                                      sums=ctx.difference_sums(adv))))}
        ref = ctx.reference(output)
        if output.ndim > 2 and not ref.is_floating_point():
            # the reference's foreground is counted once per run; the output's arg-max and its
            # overlap with it in one pass (metrics.foreground_overlap)
            ref_fg, ref_n = ctx.reference_foreground(ref)
            pred_n, inter = foreground_overlap(output, ref_fg)
            m["dice"] = float(np.mean([dice_from_counts(p, r, i) for p, r, i in zip(pred_n, ref_n, inter)]))
        return m

    def _resolve_reference(self, output: torch.Tensor, labels, target) -> torch.Tensor:
        """Target (targeted attacks), labels, or the clean prediction as pseudo-labels."""
        if target is not None:
            return _target_tensor(target, output)
        if labels is not None:
            return _validate_labels_against_output(labels, output)
        return pseudo_labels(output, self.activation)

    # ------------------------------------------------------------------ validation
    def _check_images(self, images) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor or numpy array, got {type(images).__name__}")
        if images.ndim not in (4, 5):
            raise ValueError(
                f"images must be B C H W (2-D) or B C D H W (3-D); got {images.ndim} dims, "
                f"shape {tuple(images.shape)}"
            )
        if images.shape[0] < 1 or any(s < 1 for s in images.shape):
            raise ValueError(f"images has an empty axis: shape {tuple(images.shape)}")
        if not images.is_floating_point():
            images = images.float()
        # one reduction instead of an elementwise mask: NaN/Inf propagate into the sum (a finite
        # sum that overflows only triggers the exact check)
        if not torch.isfinite(images.sum()) and not torch.isfinite(images).all():
            n = int((~torch.isfinite(images)).sum())
            raise ValueError(f"images contain {n} NaN/Inf values; clean or mask them before attacking")
        expected = expected_in_channels(self.model)
        if expected is not None and expected != images.shape[1]:
            raise ValueError(
                f"the model expects {expected} input channels but the images have {images.shape[1]}"
            )
        return images

    def _check_init(self, init, x: torch.Tensor, ctx: _Context) -> torch.Tensor:
        if not self.warm_start:
            raise ValueError(f"{self.label} cannot start from a given image (no warm start)")
        t = torch.as_tensor(init).detach().to(device=x.device, dtype=torch.float32)
        if t.shape != x.shape:
            raise ValueError(f"the warm start is shaped {tuple(t.shape)}; the images are {tuple(x.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError("the warm start holds NaN or infinite values")
        return ctx.project(t)

    def _check_labels(self, labels, x: torch.Tensor):
        if labels is None:
            return None
        if isinstance(labels, np.ndarray):
            labels = torch.from_numpy(labels)
        if not isinstance(labels, torch.Tensor):
            raise ValueError(f"labels must be a tensor/array or None, got {type(labels).__name__}")
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels have batch size {labels.shape[0]} but images have {x.shape[0]}")
        if labels.is_floating_point() and not torch.isfinite(labels).all():
            raise ValueError("labels contain NaN/Inf")
        return labels.to(x.device)

    def _check_target(self, target, x: torch.Tensor):
        if target is None:
            return None
        if self.targeted == "no":
            raise ValueError(f"{self.label} is untargeted; it takes no target")
        if isinstance(target, np.ndarray):
            target = torch.from_numpy(target)
        if isinstance(target, torch.Tensor):
            if target.ndim > 0 and target.shape[0] not in (1, x.shape[0]) and target.ndim == x.ndim - 1:
                raise ValueError(f"target batch size {target.shape[0]} does not match images {x.shape[0]}")
            return target.to(x.device)
        if isinstance(target, (bool, float)) or not isinstance(target, (int, np.integer, Sequence)):
            raise ValueError(f"target must be a label index, a label map or a class vector, got {target!r}")
        return target

    def _roi_for(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.roi is None:
            return None
        roi = self.roi
        if isinstance(roi, np.ndarray):
            roi = torch.from_numpy(roi)
        roi = torch.as_tensor(roi, device=x.device)
        spatial = x.shape[2:]
        if tuple(roi.shape[-len(spatial):]) != tuple(spatial):
            raise ValueError(f"roi shape {tuple(roi.shape)} does not match the image grid {tuple(spatial)}")
        roi = (roi != 0).to(x.dtype).reshape(-1, 1, *spatial)
        if roi.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"roi has {roi.shape[0]} masks for {x.shape[0]} images")
        if not roi.any():
            raise ValueError("roi is empty: nothing may be perturbed")
        return roi


# ---------------------------------------------------------------------- helpers


def pseudo_labels(output: torch.Tensor, activation: str = "auto") -> torch.Tensor:
    """The model's own prediction as labels: arg-max indices, or 0.5-thresholded for sigmoid."""
    out = output.detach()
    if activation == "sigmoid":
        return (torch.sigmoid(out) > 0.5).to(out.dtype)
    if activation == "none" and out.ndim > 2 and out.shape[1] > 1 and not _sums_to_one(out):
        return (out > 0.5).to(out.dtype)
    if out.ndim > 2:  # the slab-wise arg-max: torch's over the channels takes 1.1 s at BraTS size
        return channel_argmax(out).long()
    return out.argmax(1)


def _sums_to_one(p: torch.Tensor) -> bool:
    s = p.sum(1)
    return bool(torch.allclose(s, torch.ones_like(s), atol=1e-3))


def _validate_labels_against_output(labels: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    if labels.is_floating_point() and labels.shape == output.shape:
        return labels.to(output.dtype)
    return class_indices(labels, output)


def _target_tensor(target, output: torch.Tensor) -> torch.Tensor:
    """A target as class indices / float vector matching ``output``.

    * an ``int``: every voxel (segmentation) or every sample (classifier) gets that class —
      Liu's ti-FGSM setting "all labels = 1";
    * an integer map ``*spatial`` / ``B *spatial``: a user-painted target mask;
    * a float vector ``K`` / ``B K`` (or float map shaped like the output): soft/multi-hot
      targets, e.g. Ghamizi's inverse co-occurrence row.
    """
    b, k = output.shape[:2]
    spatial = output.shape[2:]
    if isinstance(target, (int, np.integer)):
        t = int(target)
        if not 0 <= t < k:
            raise ValueError(f"target label {t} is not one of the model's classes 0..{k - 1}")
        return torch.full((b, *spatial), t, dtype=torch.long, device=output.device)
    tgt = torch.as_tensor(target, device=output.device)
    if tgt.is_floating_point():
        if tgt.shape == output.shape:
            return tgt.to(output.dtype)
        if not spatial and tgt.ndim in (1, 2) and tgt.shape[-1] == k:
            return tgt.reshape(-1, k).expand(b, k).to(output.dtype)
        if not torch.equal(tgt, tgt.round()):
            raise ValueError(
                f"float target of shape {tuple(tgt.shape)} does not fit output {tuple(output.shape)}"
            )
        tgt = tgt.long()
    if tgt.ndim == len(spatial) and spatial:
        tgt = tgt[None].expand(b, *spatial)
    if tgt.ndim == 0 and not spatial:
        tgt = tgt.reshape(1).expand(b)
    return class_indices(tgt, output)
