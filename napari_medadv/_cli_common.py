"""What ``medadv``'s command modules share (``cli.py`` and ``_cli_study.py`` both import this, never
each other's internals): the user-error exception and the exit codes."""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_INTERNAL = 1


class CLIError(Exception):
    """Raised for problems the user must fix; printed as one line, exit code 2."""
