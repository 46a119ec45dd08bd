"""CosPGD — PGD with the per-pixel loss weighted by prediction/target cosine similarity
(Agnihotri, Jung, Keuper, ICML 2024)."""

from __future__ import annotations

import torch

from ._pixelwise import PixelPGD, pixel_cosine


class CosPGD(PixelPGD):
    r"""CosPGD (Agnihotri, Jung, Keuper: "CosPGD: an efficient white-box adversarial attack for
    pixel-wise prediction tasks", ICML 2024, eq. 4-5 and Algorithm 1).

    Each voxel's cross-entropy is scaled by the cosine similarity between the predicted
    distribution and the (one-hot) reference at that voxel, so the attack spends its budget on
    the voxels that are still predicted confidently as the reference and little on those already
    flipped::

        L_cos = 1/N · Σ_i cos(ψ(f(X_t))_i, Ψ(Y)_i) · L_CE(f(X_t)_i, Y_i)

    ψ the softmax, Ψ the one-hot encoding, N the number of voxels; the weight is a constant for
    the gradient (detached, as in the authors' code). Update as PGD:
    ``X_{t+1} = Π_ε(X_t + α · sign ∇L_cos)`` from ``X_0 = X + U(−ε, ε)``. With a ``target`` the
    weight is ``1 − cos`` (dissimilarity to the target) and the loss is descended, as the
    authors' targeted form.

    Sigmoid outputs (independent regions): each channel's binary cross-entropy is weighted by the
    cosine of the two-class distributions ``[p, 1 − p]`` and ``[y, 1 − y]``. Without labels the
    clean prediction (one extra forward at the clean image) is the reference.

    Arguments: ``eps=0.05``; ``steps=10``; ``alpha=None`` → ``2.5 · ε / steps`` as PGD;
    ``random_start=True``; ``restarts=1``; plus those of :class:`~.base.Attack` (``loss`` only
    ``"ce"``/``"bce"``/``None``).

    Shapes: images ``B C H W`` / ``B C D H W``; labels class indices ``B *spatial``.

    Example::

        >>> x_adv = CosPGD(model, eps=0.03, steps=20, seed=0)(images)
    """

    name = "cospgd"
    label = "CosPGD"
    description = "CosPGD (Agnihotri et al. 2024): PGD on per-pixel CE weighted by cos(prediction, target)."

    def _pixel_weights(self, output, ref, correct: torch.Tensor, k: int, targeted: bool) -> torch.Tensor:
        cos = pixel_cosine(output, ref, self.activation)
        return 1.0 - cos if targeted else cos
