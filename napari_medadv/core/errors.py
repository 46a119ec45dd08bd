"""Errors that reach users (CLI: one line, exit code 2; GUI: a notification)."""

from __future__ import annotations

from os import PathLike


class MedadvError(ValueError):
    """Base class for user-facing errors. Subclasses ``ValueError`` so bad arguments
    raise what Python users expect.

    The message speaks of the problem, never of a front end's flags or controls; ``fix`` names
    the remedy as a key (see :data:`FIXES`) that the CLI turns into a flag and the GUI into a
    control.
    """

    def __init__(self, *args, fix: str | None = None):
        super().__init__(*args)
        self.fix = fix


class InputFileError(MedadvError):
    """A file or folder given by the user cannot be used. The message names the file."""

    def __init__(self, path: str | PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ModelError(MedadvError):
    """A model cannot be loaded or does not fit the data (channels, dims, task)."""


#: remedies a core error can point to (``MedadvError.fix``); each front end says how
FIXES = {
    "trust_code": "allow the model's code to run",
    "device_cpu": "run on the CPU",
    "weights": "give the model's weights file",
    "untargeted": "drop the target",
    "channels": "say which image channel feeds each model input",
}
