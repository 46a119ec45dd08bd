"""Errors that reach users (CLI: one line, exit code 2; GUI: a notification)."""

from __future__ import annotations

from os import PathLike


class MedadvError(ValueError):
    """Base class for user-facing errors. Subclasses ``ValueError`` so bad arguments
    raise what Python users expect."""


class InputFileError(MedadvError):
    """A file or folder given by the user cannot be used. The message names the file."""

    def __init__(self, path: str | PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ModelError(MedadvError):
    """A model cannot be loaded or does not fit the data (channels, dims, task)."""
