"""Per-pixel (per-voxel) losses and weights shared by SegPGD, CosPGD and APGD's segmentation form.

The project's losses (:mod:`..losses`) return one value per *sample*; these attacks need the loss
*per voxel* before they weight or reduce it, so the per-voxel terms live here:

* :func:`pixel_loss` — cross-entropy per voxel (``B *spatial``) for softmax outputs, binary
  cross-entropy per output channel and voxel (``B K *spatial``) for sigmoid outputs (independent
  regions / findings), and whether each term is currently "correct" (arg-max equals the
  reference; for sigmoid, the 0.5 decision equals the reference);
* :func:`pixel_cosine` — CosPGD's cosine similarity between the predicted distribution and the
  reference distribution at each voxel (for sigmoid outputs the two-class distributions
  ``[p, 1 − p]`` and ``[y, 1 − y]`` of each channel);
* :class:`PixelPGD` — the PGD loop (random start, signed steps, restarts) with a per-voxel weight
  that depends on the iteration, which SegPGD and CosPGD fill in.

Shapes: output ``B K *spatial`` (or ``B K`` for a classifier: one "pixel" per sample); reference
class indices ``B *spatial`` or a float tensor shaped like the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..losses import as_dense_target, class_indices
from ..metrics import channel_argmax
from .base import _Context
from .pgd import PGD

PIXEL_LOSSES = (None, "auto", "ce", "bce")


def check_pixel_loss(attack_label: str, loss) -> None:
    """These attacks are defined on the (binary) cross-entropy per voxel; refuse another loss
    rather than silently ignoring it."""
    if loss not in PIXEL_LOSSES:
        raise ValueError(f"{attack_label} weights the per-voxel cross-entropy (ce, or bce for sigmoid "
                         f"outputs); it takes no loss={loss!r}")


def resolve_activation(activation: str, output: torch.Tensor, ref: torch.Tensor) -> str:
    """``"auto"`` → sigmoid when the reference is multi-hot (independent regions/findings), else
    softmax; the same rule as :func:`~..losses.make_loss`."""
    if activation != "auto":
        return activation
    if ref.is_floating_point() and ref.shape == output.shape:
        s = ref.sum(1)
        if output.ndim == 2 or not torch.allclose(s, torch.ones_like(s)):
            return "sigmoid"
    return "softmax"


def _log_probs(output: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "none":  # the model outputs probabilities already
        return torch.log(output.clamp_min(1e-12))
    return torch.log_softmax(output, dim=1)


def pixel_loss(output: torch.Tensor, ref: torch.Tensor, activation: str = "auto"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, correct)``: the cross-entropy of each voxel and whether it is classified as the
    reference says (``B *spatial``); for sigmoid outputs the binary cross-entropy and the
    decision of each channel at each voxel (``B K *spatial``). ``correct`` is detached (bool)."""
    act = resolve_activation(activation, output, ref)
    if act == "sigmoid":
        dense = as_dense_target(ref, output)
        loss = F.binary_cross_entropy_with_logits(output, dense, reduction="none")
        correct = (output.detach() > 0) == (dense > 0.5)
        return loss, correct
    if ref.is_floating_point() and ref.shape == output.shape:  # soft / one-hot float reference
        dense = ref.to(output.dtype)
        loss = -(dense * _log_probs(output, act)).sum(1)
        return loss, channel_argmax(output.detach()) == channel_argmax(dense)
    idx = class_indices(ref, output)
    if act == "none":
        loss = F.nll_loss(_log_probs(output, act), idx, reduction="none")
    else:  # F.cross_entropy, as torchattacks and the papers' code (bit-identical gradients)
        loss = F.cross_entropy(output, idx, reduction="none")
    # the slab-wise arg-max (equal to torch's, ties and NaN included): torch's over the channel
    # axis took 1.3 s of each SegPGD/CosPGD step at 4×240×240×155 on 2 cores
    return loss, channel_argmax(output.detach()) == idx


def pixel_cosine(output: torch.Tensor, ref: torch.Tensor, activation: str = "auto") -> torch.Tensor:
    """CosPGD's weight: ``cos(ψ(f(x))_i, Ψ(y)_i)`` at each voxel (detached), ψ the softmax and Ψ the
    one-hot encoding (Agnihotri et al. 2024, eq. 4); ``B *spatial``, or ``B K *spatial`` for sigmoid
    outputs, where each channel compares ``[p, 1 − p]`` with ``[y, 1 − y]``."""
    act = resolve_activation(activation, output, ref)
    out = output.detach()
    if act != "sigmoid" and not (ref.is_floating_point() and ref.shape == out.shape):  # class indices
        return _index_cosine(out if act == "none" else torch.softmax(out, dim=1), class_indices(ref, out))
    dense = as_dense_target(ref, out)
    if act == "sigmoid":
        p = torch.sigmoid(out)
        num = p * dense + (1 - p) * (1 - dense)
        den = torch.sqrt(p ** 2 + (1 - p) ** 2) * torch.sqrt(dense ** 2 + (1 - dense) ** 2)
        return num / den.clamp_min(1e-8)
    probs = out if act == "none" else torch.softmax(out, dim=1)
    return F.cosine_similarity(probs, dense, dim=1)


def _index_cosine(probs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``cos(p, one-hot(y)) = p_y / ||p||`` (the one-hot has norm 1; ``1e-8`` floor as
    ``F.cosine_similarity``'s, equal to it to a float32 rounding): one gather and one norm,
    where the cosine with the full one-hot builds a ``K``-channel float target and reduces over
    the channel axis (torch's norms and arg-max over a non-last axis are slow on CPU). For a
    4×240×240×155 softmax output on 2 cores: 0.3 s against 1.4 s (``vector_norm`` alone 0.7 s,
    the sum of squares 0.09 s)."""
    p_y = probs.gather(1, idx.unsqueeze(1)).squeeze(1)
    return p_y / (probs * probs).sum(1).sqrt().clamp_min(1e-8)


def per_sample_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the first: ``(B,)``."""
    return values.reshape(values.shape[0], -1).mean(1)


def use_clean_reference(ctx: _Context) -> None:
    """Resolve the reference from a forward pass at the *clean* image when there are no labels or
    target (the clean prediction is the reference), before any random start moves the input: the
    iterate's own prediction would otherwise become the pseudo-labels. One forward, no backward."""
    if ctx._ref is None and ctx._labels is None and ctx._target is None:
        with torch.no_grad():
            out = ctx.forward(ctx.x)
        ctx.clean_output = out
        ctx.reference(out)


class PixelPGD(PGD):
    """PGD whose loss is a per-voxel (binary) cross-entropy weighted by :meth:`_pixel_weights`,
    which may depend on the iteration ``k`` (0-based) of ``steps``. Random start, step size,
    restarts, warm starts and targeting as :class:`~.pgd.PGD`; restarts are ranked by the plain
    mean per-voxel cross-entropy (highest untargeted, lowest targeted)."""

    def __init__(self, model, eps: float = 0.05, steps: int = 10, alpha: float | None = None,
                 random_start: bool = True, restarts: int = 1, **kwargs):
        check_pixel_loss(self.label, kwargs.get("loss"))
        super().__init__(model, eps, steps, alpha, random_start, restarts, **kwargs)

    def _pixel_weights(self, output: torch.Tensor, ref: torch.Tensor, correct: torch.Tensor, k: int,
                       targeted: bool) -> torch.Tensor:
        # abstract (not registered): SegPGD and CosPGD define the weights; a subclass that does
        # not is a programming error, reported as such rather than attacking with no weights
        raise NotImplementedError(f"{type(self).__name__} must define _pixel_weights")

    def weighted_loss(self, output: torch.Tensor, ref: torch.Tensor, k: int, targeted: bool = False
                      ) -> torch.Tensor:
        """The attack's per-sample loss at iteration ``k``: mean over voxels of weight × CE."""
        loss, correct = pixel_loss(output, ref, self.activation)
        w = self._pixel_weights(output, ref, correct, k, targeted).detach()
        if w.shape != loss.shape:  # a per-voxel weight on per-channel (sigmoid) terms
            w = w.unsqueeze(1).expand_as(loss)
        return per_sample_mean(w * loss)

    def _loss_and_grad(self, ctx: _Context, adv: torch.Tensor, k: int, targeted: bool):
        at = adv
        adv = adv.detach().requires_grad_(True)
        with torch.enable_grad():
            out = ctx.forward(adv)
            per_sample = self.weighted_loss(out, ctx.reference(out), k, targeted)
            (grad,) = torch.autograd.grad(per_sample.sum(), adv)
        ctx.n_backward += adv.shape[0]
        ctx.note_gradient(at, grad)
        if ctx.clean_output is None:
            ctx.clean_output = out.detach()
        return per_sample.detach(), grad, out.detach()

    def _steps(self, ctx: _Context):
        use_clean_reference(ctx)
        # the unweighted mean per-voxel CE for what reads ctx.loss (the tracked final loss)
        ctx.loss_fn = lambda out, ref: per_sample_mean(pixel_loss(out, ref, self.activation)[0])
        return (yield from super()._steps(ctx))  # PGD's loop with this class's _loss_and_grad
