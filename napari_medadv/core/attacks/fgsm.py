"""FGSM — fast gradient sign method (Goodfellow et al. 2015; Liu et al. 2021, eq. 1)."""

from __future__ import annotations

import torch

from ._slabs import add_clamped as _add_clamped
from .base import Attack, AttackStep, Param, _Context, eval_mode, loss_param, model_device


class FGSM(Attack):
    r"""One signed-gradient step of size ε: ``X_adv = clip(X + ε · sign(∇_X loss(X, Y)))``.

    Distance: L∞, ε a fraction of each channel's intensity range (0.05 = the paper's 5 %).
    Liu et al. use the soft-Dice loss (eq. 5-6) for segmentation, which is the default here for
    outputs with spatial axes; classifiers default to cross-entropy. With a ``[0, 1]`` input,
    ``data_range=(0, 1)`` and cross-entropy this equals ``torchattacks.FGSM`` exactly.

    Arguments: see :class:`~.base.Attack` (``eps=0.05``, ``loss=None``, ``data_range=None``,
    ``roi=None``).

    Shapes: images ``B C H W`` or ``B C D H W``; labels ``B`` / ``B *spatial`` class indices.

    **Fast ε path** (the live slider): after :meth:`prepare` (one forward + one backward), the
    gradient sign is cached and :meth:`at_eps` builds the image for any new ε without touching
    the model; :meth:`predict_at_eps` adds exactly one forward pass.

    Example::

        >>> atk = FGSM(model, eps=0.05)
        >>> x_adv = atk(images, labels)
        >>> atk.prepare(images, labels)
        >>> x_adv2, logits = atk.predict_at_eps(0.02)   # one forward, no backward
    """

    name = "fgsm"
    live_eps = True
    label = "FGSM"
    description = "Fast gradient sign method: one step of size ε along the loss gradient sign."

    def __init__(self, model, eps: float = 0.05, **kwargs):
        super().__init__(model, eps, **kwargs)
        self._cache: dict | None = None

    def _steps(self, ctx: _Context):
        per_sample, grad, _ = ctx.loss_and_grad(ctx.x)
        sign = grad.sign()
        self._cache = {"ctx": ctx, "sign": sign}
        adv = ctx.project(ctx.x + ctx.eps * sign)
        yield AttackStep(1, 1, float(per_sample.mean()), adv, self._step_metrics(ctx, adv, ctx.clean_output)
                         if self.track_metrics else {})
        return adv

    # ------------------------------------------------------------------ fast ε path
    def prepare(self, images, labels=None, *, target=None) -> FGSM:
        """Compute and cache the gradient sign at ``images`` (one forward + one backward)."""
        self.run(images, labels, target=target)
        return self

    @property
    def prepared(self) -> bool:
        return self._cache is not None

    @property
    def clean_output(self) -> torch.Tensor:
        """Model output at the clean image, from the forward pass :meth:`prepare` already did."""
        self._require_cache()
        return self._cache["ctx"].clean_output

    @property
    def gradient_sign(self) -> torch.Tensor:
        self._require_cache()
        return self._cache["sign"]

    def at_eps(self, eps: float) -> torch.Tensor:
        """Adversarial image for a new ε from the cached sign (no model call; model device)."""
        self._require_cache()
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        ctx = self._cache["ctx"]
        step = self._cache.get("step")
        if step is None:  # width · sign · ROI once, so each ε is one multiply-add and a clamp
            step = ctx.range.width * self._cache["sign"]
            if ctx.roi is not None:
                step = step * ctx.roi
            self._cache["step"] = step
        e = torch.tensor(float(eps), dtype=step.dtype, device=step.device)
        if ctx.x.device.type != "cpu" or not (ctx.x.is_contiguous() and step.is_contiguous()):
            adv = torch.addcmul(ctx.x, step, e)
            return adv.clamp_(min=ctx.range.lo, max=ctx.range.hi)  # in place: one volume, not two
        return _add_clamped(ctx.x, step, e, ctx.range)

    @torch.no_grad()
    def predict_at_eps(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(adversarial, model output)`` for a new ε: exactly one forward pass."""
        adv = self.at_eps(eps)
        with eval_mode(self.model):
            out = self.model(adv)
        return adv, out

    def native_eps(self, eps: float) -> list[list[float]]:
        """ε in native intensity units, per sample and channel, for the cached image."""
        self._require_cache()
        return self._cache["ctx"].range.eps_native_per_channel(eps)

    def _require_cache(self):
        if self._cache is None:
            raise RuntimeError("call prepare(images, labels) (or run the attack) first")
        dev = model_device(self.model)
        if self._cache["sign"].device != dev:
            raise RuntimeError("the model moved to another device since prepare(); call prepare() again")

    params = (
        Param("eps", float, 0.05, "L∞ budget, fraction of the intensity range", 0.0, 1.0),
        loss_param(),
    )
