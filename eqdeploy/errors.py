"""The exception types the CLI turns into a one-line error, and the exit codes they map to.

Exit codes (documented in the README, tested in ``tests/test_bad_inputs.py``):
0 ok; 1 a check or verification ran and failed, or could not measure; 2 bad usage or a
bad input file; 3 an internal error (a bug: ``--debug`` shows the traceback);
128 + N interrupted by signal N (130 SIGINT, 143 SIGTERM).
"""

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


class EqdeployError(Exception):
    """A user-facing failure: the message names the cause and the fix, on one line.

    Bad usage or a bad input file unless a subclass says otherwise (``exit_code``)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, cause: str, fix: str | None = None) -> None:
        self.cause = cause
        self.fix = fix
        super().__init__(cause if not fix else f"{cause} -- {fix}")


class CheckFailed(EqdeployError):
    """A check or verification ran and failed (equivariance broken, a budget violated, an
    artifact that disagrees with its source), or could not measure (non-finite or constant
    outputs): never a pass."""

    exit_code = EXIT_CHECK_FAILED


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) arrived: unwinds like KeyboardInterrupt, so staging is removed."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signum)
