"""What one attack produced (:class:`AttackOutcome`): the adversarial image on the source grid,
the model's outputs and label maps or probabilities, and the metrics.json figures."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .attacks import AttackResult
from .io import ImageData
from .models.base import LoadedModel
from .models.channels import ChannelMapping
from .vulnerability import VulnerabilityMap


@dataclass
class AttackOutcome:
    """What one attack produced, in numpy on the source grid."""

    image: ImageData
    model: LoadedModel
    attack: str
    params: dict
    seed: int
    adversarial: np.ndarray  # C *spatial, float32, native units
    result: AttackResult
    clean_output: torch.Tensor
    adv_output: torch.Tensor
    labels: np.ndarray | None = None  # ground truth label values, if given
    channel_mapping: ChannelMapping | None = None  # which image channel fed which model input
    seg_clean: np.ndarray | None = None
    seg_adv: np.ndarray | None = None
    probs_clean: np.ndarray | None = None
    probs_adv: np.ndarray | None = None
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    vulnerability: VulnerabilityMap | None = None  # asked for with VulnerabilityOptions(map=True)
    # arrays a front end derived for display ahead of time (e.g. the segmentation diff map, made in
    # the GUI's worker instead of on its Qt thread); never written out, not part of equality
    display: dict = field(default_factory=dict, repr=False, compare=False)
    # difference_sums(image, adversarial) (per-channel sum of squares and largest |change|, L0; a
    # batch of one) when the attack computed them for its per-step metrics: the readouts of a frame
    # reuse them instead of a second pass; never written out, not part of equality
    difference_sums: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def perturbation(self) -> np.ndarray:
        return self.adversarial - self.image.array
