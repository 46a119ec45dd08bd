"""The Attack dock: :class:`AttackWidget` composes the panels of this package (inputs, method and
parameters, live ε, matched quality, the run/save jobs)."""

from .widget import AttackWidget

__all__ = ["AttackWidget"]
