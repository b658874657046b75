"""Errors the toolchain raises on purpose.

`InputError` is the user's problem (a missing file, a wrong architecture, a bad option): the CLI
prints its message as one line and exits with code 2, no traceback. `RuntimeFailure` is a failure
of the work itself (verification failed, a device died): exit code 1. Anything else is a bug and
keeps its traceback.

Messages say what is wrong and what was expected or how to fix it, e.g.
"checkpoint 'x.pth' is truncated (not a complete torch file); expected a file saved by torch.save".
"""


class BimattingError(Exception):
    """Base class of the errors the toolchain raises deliberately."""

    exit_code = 1


class InputError(BimattingError, ValueError):
    """Bad input from the user: a file, an option, a model of the wrong kind. Exit code 2."""

    exit_code = 2


class RuntimeFailure(BimattingError, RuntimeError):
    """The job ran but failed (verification mismatch, lost device). Exit code 1."""

    exit_code = 1
