"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class EqdeployError(Exception):
    """A user-facing failure: the message names the cause and the fix, on one line."""

    def __init__(self, cause: str, fix: str | None = None) -> None:
        self.cause = cause
        self.fix = fix
        super().__init__(cause if not fix else f"{cause} -- {fix}")
