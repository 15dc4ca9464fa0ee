"""Errors that the CLI turns into one readable message and a fixed exit code.

Exit codes follow DESIGN.md's contract: 0 ok, 1 internal error, 2 usage error,
3 infeasible demands, 4 invalid or unsupported model.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INFEASIBLE = 3
EXIT_INVALID_MODEL = 4


class CrosslevelError(Exception):
    """Base class of every error the user should see as a message, not a traceback."""

    exit_code = EXIT_INTERNAL


class InvalidModelError(CrosslevelError):
    """The model file is corrupt, truncated, hostile or structurally inconsistent."""

    exit_code = EXIT_INVALID_MODEL


class UnsupportedOperatorError(InvalidModelError):
    """The model uses an operator crosslevel cannot represent; names the operator and node."""

    def __init__(self, op: str, node: str, detail: str = "") -> None:
        self.op = op
        self.node = node
        msg = f"unsupported operator {op} at node {node!r}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class InfeasibleError(CrosslevelError):
    """The user's demands cannot be met; the message names the nearest feasible point."""

    exit_code = EXIT_INFEASIBLE


class UsageError(CrosslevelError):
    """A command-line argument or input file is wrong in a way Typer cannot detect."""

    exit_code = EXIT_USAGE
