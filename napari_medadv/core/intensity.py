"""Intensity ranges and ε semantics shared by every attack.

ε is a *fraction of the image's intensity range*: the seed paper (Liu et al. 2021) uses
"5 % of the maximum pixel magnitude" on inputs scaled to [0, 1], i.e. ε = 0.05. MR volumes are
usually z-scored per channel, so a single absolute ε makes no sense across contrasts; here the
range is taken per sample and per channel, and ε is converted to native units as
``eps_native = eps * (hi - lo)`` for that channel. Perturbed images are clamped to
``[lo, hi]`` of the same channel.

``data_range`` accepted by the attacks:

* ``None`` (default): the observed ``[min, max]`` of each channel of each clean input.
* ``(lo, hi)``: one fixed range for every channel (``(0, 1)`` reproduces torchattacks).
* a sequence of ``(lo, hi)`` pairs, one per channel.
* a :class:`IntensityRange` computed elsewhere (e.g. kept from a previous call).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import torch

DataRangeSpec = Union[None, tuple, Sequence, "IntensityRange"]


@dataclass(frozen=True)
class IntensityRange:
    """Per-sample, per-channel bounds, shaped ``(B, C, 1, ..., 1)`` to broadcast on images."""

    lo: torch.Tensor
    hi: torch.Tensor

    @property
    def width(self) -> torch.Tensor:
        return self.hi - self.lo

    def eps_native(self, eps: float) -> torch.Tensor:
        """ε (fraction of range) in native intensity units, broadcastable on the images."""
        return eps * self.width

    def eps_native_per_channel(self, eps: float) -> list[list[float]]:
        """ε in native units as plain floats, ``[sample][channel]`` (for reports)."""
        w = self.width.flatten(2)[..., 0].detach().cpu().double()
        return (eps * w).tolist()

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, min=self.lo, max=self.hi)

    def to(self, device) -> IntensityRange:
        return IntensityRange(self.lo.to(device), self.hi.to(device))


def compute_range(images: torch.Tensor, data_range: DataRangeSpec = None) -> IntensityRange:
    """Build the :class:`IntensityRange` for ``images`` (``B C *spatial``).

    Raises ``ValueError`` for malformed specs, ``hi <= lo`` or a channel count mismatch.
    A constant channel (zero observed width) keeps width 0: it then cannot be perturbed,
    which is the honest outcome for an empty channel.
    """
    if isinstance(data_range, IntensityRange):
        return data_range.to(images.device)
    b, c = images.shape[:2]
    view = (b, c) + (1,) * (images.ndim - 2)
    dtype, device = images.dtype, images.device
    if data_range is None:
        flat = images.detach().reshape(b, c, -1)
        lo, hi = torch.aminmax(flat, dim=2)  # one pass over the images
        lo, hi = lo.reshape(view), hi.reshape(view)
        return IntensityRange(lo, hi)
    pairs = _as_pairs(data_range, c)
    lo = torch.tensor([p[0] for p in pairs], dtype=dtype, device=device)
    hi = torch.tensor([p[1] for p in pairs], dtype=dtype, device=device)
    shape = (1, c) + (1,) * (images.ndim - 2)
    return IntensityRange(lo.reshape(shape).expand(view), hi.reshape(shape).expand(view))


def _as_pairs(spec, n_channels: int) -> list[tuple[float, float]]:
    def pair(p) -> tuple[float, float]:
        try:
            lo, hi = (float(v) for v in p)
        except (TypeError, ValueError):
            raise ValueError(f"data_range entries must be (lo, hi) pairs, got {p!r}") from None
        if not hi > lo:
            raise ValueError(f"data_range needs hi > lo, got ({lo}, {hi})")
        return lo, hi

    if isinstance(spec, (tuple, list)) and len(spec) == 2 and all(
        isinstance(v, (int, float)) for v in spec
    ):
        return [pair(spec)] * n_channels
    try:
        pairs = [pair(p) for p in spec]
    except TypeError:
        raise ValueError(f"data_range must be None, (lo, hi) or one pair per channel; got {spec!r}") from None
    if len(pairs) != n_channels:
        raise ValueError(
            f"data_range has {len(pairs)} (lo, hi) pairs but the images have {n_channels} channels"
        )
    return pairs
