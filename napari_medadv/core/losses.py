"""Losses the attacks differentiate (and, later, the defenses train with).

Every loss here maps ``(output, target)`` to a **per-sample** tensor of shape ``(B,)``. The attacks
sum it before differentiating, so each sample's gradient is independent of the batch size
(the sign, which is all FGSM-type attacks use, is unchanged by that positive scaling), and PGD's
restarts can keep the strongest start per sample.

Tensor layout: ``output`` is ``B K`` (classifier) or ``B K *spatial`` (segmentation, 2-D or
3-D) with K the number of classes/regions. ``target`` is either

* an integer label map ``B *spatial`` / ``B 1 *spatial`` (or class indices ``B``) holding
  *class indices* 0..K-1, or
* a float tensor with the same shape as ``output`` (one-hot, soft labels or multi-hot regions).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ACTIVATIONS = ("softmax", "sigmoid", "none")


def _activate(output: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softmax":
        return torch.softmax(output, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(output)
    if activation == "none":
        return output
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def as_dense_target(target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Return ``target`` as a float tensor shaped like ``output`` (one-hot for index maps).

    Raises ``ValueError`` when shapes do not fit or a class index is outside ``0..K-1``.
    """
    k = output.shape[1]
    if target.is_floating_point() and target.shape == output.shape:
        return target.to(output.dtype)
    idx = class_indices(target, output)
    onehot = F.one_hot(idx, k).movedim(-1, 1)
    return onehot.to(output.dtype)


def class_indices(target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Integer class indices shaped ``B *spatial`` for an index target (validated)."""
    k = output.shape[1]
    spatial = output.shape[2:]
    t = target
    if t.ndim == output.ndim and t.shape[1] == 1:
        t = t[:, 0]
    if t.shape != (output.shape[0], *spatial):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not fit model output {tuple(output.shape)}: "
            f"expected class indices shaped {(output.shape[0], *spatial)} "
            f"or a float tensor shaped like the output"
        )
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError("a target with the spatial shape must hold integer class indices")
    t = t.long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
        bad = sorted(set(torch.unique(t).tolist()) - set(range(k)))
        raise ValueError(f"target holds class index {bad} but the model outputs {k} classes (0..{k - 1})")
    return t


def soft_dice_coefficient(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 1e-5,
    include_background: bool = False,
    normalization: str = "paper",
) -> torch.Tensor:
    """Soft Dice coefficient per sample — Liu et al. 2021, eq. 5 (and eq. 7 with soft targets).

    ``D = 1/N * sum_{i=1}^{N-1} (2 sum F_i Y_i + γ) / (sum F_i + sum Y_i + γ)``
    with the sums over all voxels, N the number of classes and class 0 (background) skipped.

    Args:
        probs: ``B K *spatial`` probabilities (after softmax/sigmoid).
        target: same shape, one-hot or soft labels.
        gamma: the paper's small positive γ (in numerator and denominator).
        include_background: also count class 0 (set True for sigmoid region outputs such as
            MONAI's BraTS bundle, which has no background channel).
        normalization: ``"paper"`` divides by N as eq. 5 is printed (N = all classes, background
            included); ``"mean"`` divides by the number of classes summed (N-1 without
            background), as MONAI's ``DiceLoss`` does. The two differ by the constant (N-1)/N,
            so the gradient *sign* — all FGSM-type attacks use — is identical.

    Written by hand rather than calling ``monai.losses.DiceLoss`` because MONAI averages over
    the included classes (N-1), not over N as eq. 5; ``tests/core/test_losses.py`` checks both
    against a hand-computed case and documents the factor.
    """
    if probs.shape != target.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and target {tuple(target.shape)} differ in shape")
    n = probs.shape[1]
    start = 0 if include_background else 1
    if start >= n:
        raise ValueError("soft Dice without background needs at least 2 classes")
    dims = tuple(range(2, probs.ndim))
    p, y = probs[:, start:], target[:, start:]
    if dims:
        inter, ps, ys = (p * y).sum(dims), p.sum(dims), y.sum(dims)
    else:  # classifier outputs: no spatial axes
        inter, ps, ys = p * y, p, y
    per_class = (2.0 * inter + gamma) / (ps + ys + gamma)
    if normalization == "paper":
        return per_class.sum(1) / n
    if normalization == "mean":
        return per_class.mean(1)
    raise ValueError(f"normalization must be 'paper' or 'mean', got {normalization!r}")


class SoftDiceLoss:
    """``1 - D`` with D the soft Dice of :func:`soft_dice_coefficient` (Liu eq. 6)."""

    name = "dice"

    def __init__(
        self,
        activation: str = "softmax",
        *,
        gamma: float = 1e-5,
        include_background: bool = False,
        normalization: str = "paper",
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if normalization not in ("paper", "mean"):
            raise ValueError(f"normalization must be 'paper' or 'mean', got {normalization!r}")
        self.activation = activation
        self.gamma = gamma
        self.include_background = include_background
        self.normalization = normalization

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = _activate(output, self.activation)
        dense = as_dense_target(target, output)
        return 1.0 - soft_dice_coefficient(
            probs,
            dense,
            gamma=self.gamma,
            include_background=self.include_background,
            normalization=self.normalization,
        )


class CrossEntropyLoss:
    """Cross-entropy on logits, averaged over voxels per sample (``B`` for classifiers).

    Accepts class indices or soft/one-hot float targets shaped like the output.
    """

    name = "ce"

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.is_floating_point() and target.shape == output.shape:
            ce = F.cross_entropy(output, target.to(output.dtype), reduction="none")
        else:
            ce = F.cross_entropy(output, class_indices(target, output), reduction="none")
        return ce.reshape(ce.shape[0], -1).mean(1)


class BCELoss:
    """Binary cross-entropy for multi-label outputs (classifier findings or sigmoid regions).

    ``activation="sigmoid"`` (default) expects logits and uses the numerically stable
    ``binary_cross_entropy_with_logits``; ``"none"`` expects probabilities.
    """

    name = "bce"

    def __init__(self, activation: str = "sigmoid"):
        if activation not in ("sigmoid", "none"):
            raise ValueError(f"BCE activation must be 'sigmoid' or 'none', got {activation!r}")
        self.activation = activation

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dense = as_dense_target(target, output)
        if self.activation == "sigmoid":
            loss = F.binary_cross_entropy_with_logits(output, dense, reduction="none")
        else:
            loss = F.binary_cross_entropy(output.clamp(0, 1), dense, reduction="none")
        return loss.reshape(loss.shape[0], -1).mean(1)


class MSELoss:
    """Mean squared error between activated outputs and the (dense) target, per sample."""

    name = "mse"

    def __init__(self, activation: str = "softmax"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = _activate(output, self.activation)
        dense = as_dense_target(target, output)
        err = (probs - dense) ** 2
        return err.reshape(err.shape[0], -1).mean(1)


class DistillationDiceLoss:
    """Defensive-distillation loss of Liu et al. 2021, eq. 7: ``1 - D(F_d(X), F(X))``.

    ``F_d(X) = softmax(z_d / T)`` is the student's output at temperature T (eq. 4) and the
    target ``F(X)`` the teacher's soft labels (probabilities, ``B K *spatial``); D is the soft
    Dice of eq. 5 with the soft labels in place of the one-hot Y (class 0 skipped, divided by
    N as printed). Returns the per-sample loss ``(B,)``.

    With soft labels this soft Dice is not maximal at ``F_d = F``: a student sharper than the
    teacher scores better (tested), so distillation does not pull the student onto the teacher's
    soft labels, and more so the more diffuse they are (high T). ``include_background=True``
    also counts class 0 (not in the paper), an experimental variant that the temperature sweep
    in :mod:`~.training.defenses` measures.
    """

    name = "distill-dice"

    def __init__(self, temperature: float = 1.0, *, gamma: float = 1e-5, include_background: bool = False):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.temperature = float(temperature)
        self.gamma = gamma
        self.include_background = bool(include_background)

    def __call__(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        if not teacher_probs.is_floating_point() or teacher_probs.shape != student_logits.shape:
            raise ValueError(
                f"teacher soft labels must be probabilities shaped like the student output "
                f"{tuple(student_logits.shape)}, got {tuple(teacher_probs.shape)}"
            )
        probs = torch.softmax(student_logits / self.temperature, dim=1)
        return 1.0 - soft_dice_coefficient(probs, teacher_probs.to(probs.dtype), gamma=self.gamma,
                                           include_background=self.include_background)


def ordinal_targets(target: torch.Tensor) -> torch.Tensor:
    """Frank & Hall's cumulative binary targets of a real-valued target, averaged over the cuts.

    The Q distinct values of each target vector (along the channel axis ``1``) are Q ordered
    levels; Frank & Hall (2001) decompose them into the Q - 1 binary problems "is the value
    above cut q" (q = 1..Q-1). A channel with value t is above ``#{distinct values <= t} - 1``
    cuts, so its mean binary target is ``(#{distinct v <= t} - 1) / (Q - 1)``: 1 for the
    largest value, 0 for the smallest, evenly spaced between — only the *order* of the target
    values matters. A target with a single level (Q = 1) has no cut and gives all zeros.
    Pairwise over channels (K² comparisons per voxel), so it works for ``B K *spatial``.
    """
    t = target.unsqueeze(1)  # B 1 K *: value of channel j along axis 2
    ti = target.unsqueeze(2)  # B K 1 *: value of channel i along axis 1
    k = target.shape[1]
    idx = torch.arange(k, device=target.device)
    earlier = (idx[None, :] < idx[:, None]).reshape(1, k, k, *([1] * (target.ndim - 2)))
    # channel j is the first of its value: no earlier channel holds the same value
    dup = ((t == ti) & earlier).any(2)  # B K *: channel i repeats an earlier value
    first = (~dup).unsqueeze(1)  # B 1 K *
    levels = first.sum(2).to(target.dtype)  # B 1 *: Q per voxel
    below = ((t <= ti) & first).sum(2).to(target.dtype)  # B K *: distinct values <= t_i
    cuts = (levels - 1).clamp_min(1)
    return torch.where(levels > 1, (below - 1) / cuts, torch.zeros_like(below))


class OrdinalLoss:
    """Ordinal classification loss (OL) of Ghamizi et al. 2023, after Frank & Hall 2001.

    Ghamizi's risk-targeted attack treats the real-valued target ``C(ŷ*)`` as an *ordinal*
    target ("the order of the values of target logits actually matter") and cites Frank & Hall's
    simple approach to ordinal classification for OL without printing a formula. Frank & Hall
    turn Q ordered levels into Q - 1 cumulative binary problems ("above cut q?"); scoring each
    label's probability against every cut with binary cross-entropy and averaging over the cuts
    equals BCE against the mean cumulative target of :func:`ordinal_targets` (BCE is linear in
    its target), which is what is computed: ``OL = mean_i BCE(p_i, ordinal_targets(t)_i)`` per
    sample. For a binary target (two levels) OL equals BCE; a rescaling of the target that keeps
    its order leaves OL unchanged.

    ``activation``: ``"sigmoid"`` (logits, default), ``"none"`` (probabilities) or ``"softmax"``.
    """

    name = "ol"

    def __init__(self, activation: str = "sigmoid"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ordinal = ordinal_targets(as_dense_target(target, output))
        if self.activation == "sigmoid":
            loss = F.binary_cross_entropy_with_logits(output, ordinal, reduction="none")
        else:
            loss = F.binary_cross_entropy(_activate(output, self.activation).clamp(0, 1), ordinal, reduction="none")
        return loss.reshape(loss.shape[0], -1).mean(1)


LOSSES = {"dice": SoftDiceLoss, "ce": CrossEntropyLoss, "bce": BCELoss, "mse": MSELoss, "ol": OrdinalLoss}


def make_loss(spec: str | LossFn | None, output: torch.Tensor, target: torch.Tensor | None = None,
              activation: str = "auto") -> LossFn:
    """Resolve a loss spec (``None``/"auto", a name from :data:`LOSSES`, or a callable).

    The automatic choice: segmentation outputs (spatial axes) → soft Dice (Liu's choice);
    a float multi-hot target shaped like a classifier output → BCE; otherwise cross-entropy.
    ``activation="auto"`` means softmax, except sigmoid when the target is a float tensor
    shaped like the output and the loss is BCE/Dice on a multi-label task.
    """
    if callable(spec) and not isinstance(spec, str):
        return spec
    multilabel = target is not None and target.is_floating_point() and target.shape == output.shape
    act = activation
    if act == "auto":
        act = "sigmoid" if multilabel and (output.ndim == 2 or _is_multihot(target)) else "softmax"
    if spec in (None, "auto"):
        if output.ndim > 2:
            return SoftDiceLoss(act, include_background=act == "sigmoid")
        return BCELoss("sigmoid" if act != "none" else "none") if multilabel else CrossEntropyLoss()
    if spec not in LOSSES:
        raise ValueError(f"unknown loss {spec!r}; choose one of {sorted(LOSSES)} or pass a callable")
    if spec == "dice":
        return SoftDiceLoss(act, include_background=act == "sigmoid")
    if spec == "bce":
        return BCELoss("none" if act == "none" else "sigmoid")
    if spec == "mse":
        return MSELoss(act)
    if spec == "ol":
        return OrdinalLoss(act)
    return CrossEntropyLoss()


def _is_multihot(target: torch.Tensor) -> bool:
    """True when channels do not sum to one (independent regions rather than a one-hot)."""
    s = target.sum(1)
    return not torch.allclose(s, torch.ones_like(s))
