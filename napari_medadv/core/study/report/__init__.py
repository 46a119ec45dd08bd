"""A study folder's tables, statistics, figures and report, rebuilt from its stored cases."""

from .tables import build_report

__all__ = ["build_report"]
