"""The library's own errors: problems with what the user gave, each naming the file or option and the problem.

Only these (and an interrupt) become one ``error:`` line at the command line; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import re


def itk_reason(error: BaseException) -> str:
    """The informative part of an ITK exception (its text starts with ITK's source file and line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK's own message ("ITK ERROR: Filter(0x…): what went wrong") when there is one, without the object's address
    errors = [re.sub(r"^\w+\(0x[0-9a-fA-F]+\): ", "", line.split("ERROR: ", 1)[1]) for line in lines
              if "ERROR: " in line]
    useful = errors or [line for line in lines
                        if not line.startswith("/") and not line.startswith("Reason: No such file")]
    return " ".join(useful or lines)[:200]


class InputError(ValueError):
    """Something the user gave cannot be used; the message names the file or option and the problem."""


class UsageError(InputError):
    """An option or a combination of options is invalid."""


class OutputError(InputError):
    """An output cannot be written where asked (it is an input, exists, is on a read-only or full disk, ...)."""


class Interrupted(BaseException):
    """The run was stopped by a signal (SIGINT, SIGTERM); raised so that every ``finally`` cleans up first."""

    def __init__(self, signal_name: str, exit_status: int) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_status = exit_status


class CaseError(InputError):
    """An input case or image file cannot be used; the message names the file and the problem."""


class WeightsError(InputError):
    """A weights file is missing, damaged, of another format or architecture, or holds unusable values."""
