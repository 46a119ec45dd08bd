"""APGD — Auto-PGD with its step-size schedule, momentum and checkpoints (Croce & Hein, ICML 2020)."""

from __future__ import annotations

import torch

from ..losses import class_indices
from ._pixelwise import per_sample_mean, pixel_loss, resolve_activation, use_clean_reference
from .base import Attack, AttackStep, Param, _check_finite_number, _Context, check_positive_int

OBJECTIVES = ("ce", "dlr")


def dlr_loss(output: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    r"""Difference of logits ratio per pixel (Croce & Hein 2020, eq. 6), ``B *spatial``::

        DLR(z, y) = − (z_y − max_{i≠y} z_i) / (z_π1 − z_π3)

    π the logits sorted in decreasing order (+1e-12 in the denominator, as the authors' code).
    Invariant to shifting and rescaling the logits; needs at least 3 classes. ``ref``: class
    indices ``B *spatial`` (or a float tensor shaped like the output: its arg-max).
    """
    k = output.shape[1]
    if k < 3:
        raise ValueError(f"the DLR loss needs at least 3 mutually exclusive classes; the model has {k} "
                         "outputs (use objective='ce')")
    idx = ref.argmax(1) if ref.is_floating_point() and ref.shape == output.shape else class_indices(ref, output)
    z_sorted, ind_sorted = output.sort(dim=1)
    top = (ind_sorted[:, -1] == idx).to(output.dtype)  # 1 where y is the arg-max (then the runner-up counts)
    z_y = output.gather(1, idx.unsqueeze(1)).squeeze(1)
    # the same arithmetic as auto-attack's dlr_loss, so a classifier's values agree to the last bit
    return -(z_y - z_sorted[:, -2] * top - z_sorted[:, -1] * (1.0 - top)) / (
        z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def checkpoint_schedule(steps: int) -> list[int]:
    """Iteration counts after which APGD checks its step size: ``w_j = ⌈p_j · N⌉`` with
    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)`` (Croce & Hein
    2020, section 3.2), in the integer form of the authors' code: windows of ``⌊0.22 N⌋`` steps,
    each ``⌊0.03 N⌋`` shorter than the last, at least ``⌊0.06 N⌋`` (each at least 1)."""
    steps = check_positive_int("steps", steps)
    k, k_min, k_decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, at = [], 0
    while at + k <= steps:
        at += k
        out.append(at)
        k = max(k - k_decr, k_min)
    return out


class APGD(Attack):
    r"""APGD, L∞ (Croce & Hein: "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", ICML 2020, Algorithm 1).

    From a random start ``x^(0)`` on the ε-ball's surface scaled per sample (as the authors'
    code), with step size ``η^(0) = 2ε``::

        z^(k+1) = Π_S(x^(k) + η^(k) · sign ∇f(x^(k)))
        x^(k+1) = Π_S(x^(k) + α (z^(k+1) − x^(k)) + (1 − α)(x^(k) − x^(k−1)))      α = 0.75 (1 at k = 0)

    At each checkpoint ``w_j`` (:func:`checkpoint_schedule`) the step size of a sample is halved,
    and its iterate restarted from the best point so far ``x_max``, when (1) the loss rose in at
    most ``ρ`` (``rho``) of the window's steps, or (2) its step size was not halved at the last
    checkpoint and its best loss has not improved since. The result is ``x_max``, the iterate with
    the highest loss (per sample, over restarts).

    Objectives (``objective``): ``"ce"`` — cross-entropy (binary CE of each output for sigmoid
    outputs); ``"dlr"`` — the difference of logits ratio (:func:`dlr_loss`, softmax outputs with at
    least 3 classes). For segmentation both are evaluated per voxel and averaged, the per-pixel
    form used for segmentation by Croce et al. (2023, "Towards reliable evaluation and fast
    training of robust semantic segmentation models"). Without labels the clean prediction (one
    extra forward at the clean image) is the reference. Untargeted only. A warm start
    (``iterate(init=...)``, the dock's live ε) replaces the first random start.

    Differences from ``torchattacks.APGD`` / auto-attack's ``APGDAttack`` (tested):

    * condition (1) at the first checkpoint compares ``f(x^(1))`` with ``f(x^(0))`` as the paper
      says; the reference code compares it with 0 (index −1 of a zero-initialised array), which
      for CE always counts as a rise. Everything else follows the reference code, including its
      ``≤ ρ`` (the paper prints ``<``);
    * the result is ``x_max`` for every sample, not the last misclassified iterate (or the clean
      image when none was found): a segmentation has no single "misclassified", and the strongest
      point is what a robustness figure needs.

    Arguments: ``eps=0.05`` (fraction of each channel's range); ``steps=10`` (N; the paper uses
    100); ``restarts=1``; ``objective="ce"``; ``rho=0.75``; plus those of :class:`~.base.Attack`
    (no ``loss``: the objective chooses it).

    Shapes: images ``B C H W`` / ``B C D H W``; labels class indices ``B`` / ``B *spatial``.

    Example::

        >>> x_adv = APGD(model, eps=8/255, steps=100, objective="dlr", data_range=(0, 1), seed=0)(x, y)
        >>> x_adv = APGD(unet, eps=0.02, steps=20)(volume)      # per-voxel CE vs the clean prediction
    """

    name = "apgd"
    label = "APGD"
    description = "Auto-PGD (Croce & Hein 2020): adaptive step size, momentum, checkpoints; CE or DLR loss."
    warm_start = True
    params = (
        Param("eps", float, 0.05, "L∞ budget, fraction of the intensity range", 0.0, 1.0),
        Param("steps", int, 10, "iterations per restart (the paper: 100)", 1, 10000),
        Param("restarts", int, 1, "random restarts; the strongest per sample is kept", 1, 100),
        Param("objective", str, "ce", "loss APGD maximises: cross-entropy or difference of logits ratio",
              choices=OBJECTIVES),
        Param("rho", float, 0.75, "step size halves when the loss rose in at most this share of a window",
              0.0, 1.0),
    )

    def __init__(self, model, eps: float = 0.05, steps: int = 10, restarts: int = 1, objective: str = "ce",
                 rho: float = 0.75, **kwargs):
        if kwargs.get("loss") not in (None, "auto"):
            raise ValueError(f"APGD maximises objective='ce' or 'dlr'; it takes no loss={kwargs['loss']!r}")
        super().__init__(model, eps, **kwargs)
        self.steps = check_positive_int("steps", steps)
        self.restarts = check_positive_int("restarts", restarts)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        self.objective = objective
        self.rho = _check_finite_number("rho", rho, minimum=0.0)
        if self.rho > 1:
            raise ValueError(f"rho must be in [0, 1], got {rho}")

    def objective_value(self, output: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The per-sample objective APGD maximises (mean over voxels for segmentation)."""
        if self.objective == "dlr":
            if resolve_activation(self.activation, output, ref) == "sigmoid":
                raise ValueError("the DLR loss needs softmax outputs (mutually exclusive classes); "
                                 "this model's outputs are independent sigmoids: use objective='ce'")
            return per_sample_mean(dlr_loss(output, ref))
        return per_sample_mean(pixel_loss(output, ref, self.activation)[0])

    def _start(self, ctx: _Context, restart: int) -> torch.Tensor:
        """``x + ε · t / max|t|``, t uniform in [−1, 1]: the largest coordinate on the ball's surface;
        a warm start (``iterate(init=...)``, live ε) replaces the first one."""
        if restart == 0 and ctx.init is not None:
            return ctx.init
        t = 2 * torch.rand(ctx.x.shape, generator=ctx.rng, device=ctx.x.device) - 1
        t = t / t.reshape(t.shape[0], -1).abs().amax(1).reshape(-1, *([1] * (t.ndim - 1)))
        return ctx.project(ctx.x + ctx.eps * t)

    def _steps(self, ctx: _Context):
        use_clean_reference(ctx)
        ctx.loss_fn = self.objective_value
        best = best_loss = None
        for r in range(self.restarts):
            adv, loss = yield from self._single_run(ctx, r)
            if best is None:
                best, best_loss = adv, loss
            else:
                better = (loss > best_loss).reshape(-1, *([1] * (adv.ndim - 1)))
                best = torch.where(better, adv, best)
                best_loss = torch.maximum(loss, best_loss)
        return best

    def _single_run(self, ctx: _Context, restart: int):
        n = self.steps
        view = (-1, *([1] * (ctx.x.ndim - 1)))
        adv = self._start(ctx, restart)
        loss, grad, out = ctx.loss_and_grad(adv)
        # the output at x_best travels with it, so a restored iterate keeps its own prediction
        x_best, grad_best, loss_best, out_best = adv.clone(), grad.clone(), loss.clone(), out
        eta = torch.full((ctx.x.shape[0],), 2.0, device=adv.device)  # step size in units of ε
        window, k_min, k_decr = max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(int(0.03 * n), 1)
        counter, rises = 0, torch.zeros_like(loss)
        best_at_check, halved_at_check = loss_best.clone(), torch.ones_like(loss, dtype=torch.bool)
        adv_old = adv
        for i in range(n):
            momentum = adv - adv_old
            adv_old = before = adv
            a = 0.75 if i > 0 else 1.0
            z = ctx.project(adv + eta.reshape(view) * ctx.eps * grad.sign())
            new = ctx.project(adv + (z - adv) * a + momentum * (1 - a))
            metrics = self._step_metrics(ctx, adv, out) if self.track_metrics else {}
            out_eval = out
            loss_before = float(loss.mean())
            prev = loss
            loss, grad, out = ctx.loss_and_grad(new)
            adv = new
            rises += (loss > prev).to(rises.dtype)
            improved = loss > loss_best
            m = improved.reshape(view)
            x_best, grad_best = torch.where(m, adv, x_best), torch.where(m, grad, grad_best)
            out_best = torch.where(improved.reshape(-1, *([1] * (out.ndim - 1))), out, out_best)
            loss_best = torch.where(improved, loss, loss_best)
            counter += 1
            if counter == window:  # checkpoint: conditions (1) or (2) halve η and restart from x_max
                halve = (rises <= self.rho * window) | (~halved_at_check & (best_at_check >= loss_best))
                halved_at_check, best_at_check = halve, loss_best.clone()
                if halve.any():
                    eta = torch.where(halve, eta / 2, eta)
                    hm = halve.reshape(view)
                    adv, grad = torch.where(hm, x_best, adv), torch.where(hm, grad_best, grad)
                    out = torch.where(halve.reshape(-1, *([1] * (out.ndim - 1))), out_best, out)
                counter, window = 0, max(window - k_decr, k_min)
                rises.zero_()
            yield AttackStep(restart * n + i + 1, n * self.restarts, loss_before, adv,
                             {**metrics, "step_size": float(eta.mean())}, restart=restart,
                             evaluated=before, output=out_eval)
        return x_best, loss_best
