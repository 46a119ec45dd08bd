"""i-FGSM / BIM — iterative FGSM (Kurakin et al. 2017; Liu et al. 2021, eq. 2)."""

from __future__ import annotations

from .base import Attack, AttackStep, Param, _Context, _check_finite_number, check_positive_int, loss_param


class IFGSM(Attack):
    r"""Iterative FGSM (a.k.a. BIM): ``X_{k+1} = clip_ε(X_k + α · sign(∇ loss(X_k, Y)))``, ``X_0 = X``.

    Distance: L∞. Each iterate is projected onto the ε-ball around the clean image and clamped
    to the valid range. Liu et al. pick α and N with ``α · N = ε`` (ε = 0.05, N = 10), which is
    the default here when ``alpha`` is ``None``. Equals ``torchattacks.BIM`` with the same
    ``eps``, ``alpha``, ``steps``, cross-entropy and ``data_range=(0, 1)``.

    Arguments: ``eps=0.05``, ``steps=10``, ``alpha=None`` (→ ε/steps, a fraction of the range
    like ε), plus those of :class:`~.base.Attack`.

    Example::

        >>> x_adv = IFGSM(model, eps=0.05, steps=10)(images, labels)
    """

    name = "ifgsm"
    label = "i-FGSM"
    description = "Iterative FGSM (BIM): N signed-gradient steps of size α, projected on the ε-ball."
    params = (
        Param("eps", float, 0.05, "L∞ budget, fraction of the intensity range", 0.0, 1.0),
        Param("steps", int, 10, "number of iterations N", 1, 10000),
        Param("alpha", float, None, "step size α (fraction of range); default ε/N", 0.0, 1.0),
        loss_param(),
    )
    _direction = 1.0  # +1: ascend the loss (untargeted); -1: descend towards a target
    warm_start = True

    def __init__(self, model, eps: float = 0.05, steps: int = 10, alpha: float | None = None, **kwargs):
        super().__init__(model, eps, **kwargs)
        self.steps = check_positive_int("steps", steps)
        if alpha is not None:
            alpha = _check_finite_number("alpha", alpha, minimum=0.0, strict=True)
        self.alpha = alpha

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else self.eps / self.steps

    def _steps(self, ctx: _Context):
        alpha = ctx.range.eps_native(self.step_size)
        adv = ctx.start()
        for k in range(self.steps):
            per_sample, grad, out = ctx.loss_and_grad(adv)
            metrics = self._step_metrics(ctx, adv, out) if self.track_metrics else {}
            before, adv = adv, ctx.project(adv + self._direction * alpha * grad.sign())
            yield AttackStep(k + 1, self.steps, float(per_sample.mean()), adv, metrics, evaluated=before, output=out)
        return adv
