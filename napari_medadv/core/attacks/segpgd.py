"""SegPGD — PGD re-weighting correctly and wrongly classified pixels (Gu et al., ECCV 2022)."""

from __future__ import annotations

import torch

from ._pixelwise import PixelPGD


class SegPGD(PixelPGD):
    r"""SegPGD (Gu, Zhao, Tresp, Torr: "SegPGD: An Effective and Efficient Adversarial Attack for
    Evaluating and Boosting Segmentation Robustness", ECCV 2022, eq. 6-7).

    The per-pixel cross-entropy is split between the pixels still classified as the reference
    (``P^T``) and those already wrong (``P^F``), with a weight that moves over the iterations::

        L(t) = (1 − λ(t)) / N · Σ_{j∈P^T} L_CE(j)  +  λ(t) / N · Σ_{k∈P^F} L_CE(k),
        λ(t) = (t − 1) / (2T),   t = 1 … T

    so early steps push the correct pixels over the decision boundary and later ones keep the
    flipped pixels from flipping back (λ rises from 0 to just under ½). N is the number of voxels
    (the loss is a per-sample mean). The update is PGD's: ``X_{t+1} = Π_ε(X_t + α · sign ∇L(t))``
    from ``X_0 = X + U(−ε, ε)``. With a ``target`` (targeted form of the authors' code), the two
    weights swap (pixels already at the target get λ) and the loss is descended.

    Sigmoid outputs (independent regions) use the binary cross-entropy of each channel at each
    voxel, "correct" meaning the 0.5 decision matches the reference. Without labels the clean
    prediction (one extra forward at the clean image) is the reference.

    Arguments: ``eps=0.05``; ``steps=10`` (T); ``alpha=None`` → ``2.5 · ε / steps`` as PGD;
    ``random_start=True``; ``restarts=1``; plus those of :class:`~.base.Attack` (``loss`` only
    ``"ce"``/``"bce"``/``None``: the attack is defined on the cross-entropy).

    Shapes: images ``B C H W`` / ``B C D H W``; labels class indices ``B *spatial``.

    Example::

        >>> x_adv = SegPGD(model, eps=0.03, steps=20, seed=0)(images)       # vs the clean prediction
        >>> x_adv = SegPGD(model, eps=0.03, steps=20)(images, labels)        # vs ground truth
    """

    name = "segpgd"
    label = "SegPGD"
    description = "SegPGD (Gu et al. 2022): PGD on per-pixel CE, weighted between correct and wrong pixels."

    @staticmethod
    def lambda_at(k: int, steps: int) -> float:
        """λ(t) for the 0-based iteration ``k`` (t = k + 1): ``k / (2T)``."""
        return k / (2.0 * steps)

    def _pixel_weights(self, output, ref, correct: torch.Tensor, k: int, targeted: bool) -> torch.Tensor:
        lam = self.lambda_at(k, self.steps)
        on, off = (lam, 1.0 - lam) if targeted else (1.0 - lam, lam)
        return off + (on - off) * correct.to(output.dtype)  # `on` where correct, `off` elsewhere
