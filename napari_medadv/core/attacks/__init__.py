"""Attacks and the one registry the CLI, the GUI and the study read.

Adding an attack = one file with an :class:`~.base.Attack` subclass + one line in ``_BUILTIN``
below; it then appears in ``medadv attack --attack``, the napari dropdown and study grids.
"""

from __future__ import annotations

from dataclasses import dataclass

from .apgd import APGD
from .artifacts import ARTIFACTS, MRArtifact, MRBiasField, MRBlur, MRGaussianNoise, MRGhosting, MRMotion, MRSpike
from .base import Attack, AttackResult, AttackStep, Param
from .cospgd import CosPGD
from .dgde import DGDE
from .fgsm import FGSM
from .ifgsm import IFGSM
from .noise import RandomNoise
from .pgd import PGD, RiskPGD
from .segpgd import SegPGD
from .tifgsm import TIFGSM

BIM = IFGSM  # torchattacks' name for i-FGSM

_BUILTIN: tuple[type[Attack], ...] = (FGSM, IFGSM, TIFGSM, PGD, RiskPGD, SegPGD, CosPGD, APGD, DGDE,
                                      RandomNoise, *ARTIFACTS)  # MR artifacts (torchio): motion ... blur


@dataclass(frozen=True)
class AttackSpec:
    """What a front end needs to offer an attack without importing its module by name, or testing
    its class or name: its parameters and capabilities.

    ``kind``: ``"adversarial"``, ``"random"`` or ``"artifact"``; ``takes_eps``: has an ε budget
    (artifacts have a severity instead); ``iterative``: has steps (per-step history makes sense);
    ``live_eps``: one forward pass per ε once prepared (the live slider); ``warm_start``: a run
    can continue from a given image (live ε for iterative attacks); ``live_search``: the
    parameters with which a kept search continues (``Attack.open_search``: DGDE's query budget and
    pixel target, the dock's live controls).
    """

    name: str
    label: str
    description: str
    cls: type[Attack]
    params: tuple[Param, ...]
    gradient_free: bool
    targeted: str
    kind: str = "adversarial"
    live_eps: bool = False
    warm_start: bool = False
    live_search: tuple[str, ...] = ()

    @property
    def takes_eps(self) -> bool:
        return any(p.name == "eps" for p in self.params)

    @property
    def iterative(self) -> bool:
        return any(p.name == "steps" for p in self.params)

    def create(self, model, **kwargs) -> Attack:
        """Instantiate with keyword arguments; unknown ones raise a clear ``ValueError``."""
        allowed = {p.name for p in self.params} | {
            "loss", "activation", "data_range", "roi", "seed", "track_metrics", "region", "batch_size",
            "spacing",  # MR artifacts: voxel size in mm (motion translations, blur widths)
        }
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise ValueError(f"{self.label} does not take {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}")
        kwargs = {k: v for k, v in kwargs.items() if v is not None or k in ("alpha", "class_index")}
        return self.cls(model, **kwargs)


class AttackRegistry(dict):
    """``name -> AttackSpec``, in the order the front ends show them."""

    def register(self, cls: type[Attack]) -> type[Attack]:
        if cls.name in self:
            raise ValueError(f"an attack named {cls.name!r} is already registered")
        self[cls.name] = AttackSpec(cls.name, cls.label, cls.description, cls, cls.params,
                                    cls.gradient_free, cls.targeted, cls.kind, cls.live_eps,
                                    cls.warm_start, cls.live_search)
        return cls

    def get_spec(self, name: str) -> AttackSpec:
        try:
            return self[name]
        except KeyError:
            raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(self)}") from None

    def create(self, name: str, model, **kwargs) -> Attack:
        return self.get_spec(name).create(model, **kwargs)


ATTACKS = AttackRegistry()
for _cls in _BUILTIN:
    ATTACKS.register(_cls)

__all__ = [
    "APGD", "ARTIFACTS", "ATTACKS", "Attack", "AttackRegistry", "AttackResult", "AttackSpec", "AttackStep", "BIM",
    "CosPGD", "DGDE", "FGSM", "IFGSM", "MRArtifact", "MRBiasField", "MRBlur",
    "MRGaussianNoise", "MRGhosting", "MRMotion", "MRSpike", "PGD", "Param", "RandomNoise", "RiskPGD", "SegPGD", "TIFGSM",
]
