"""User-facing errors: one line that names the problem and the fix; the CLI exits with status 2."""


class KinemaError(Exception):
    """A problem with the user's input or environment, reported as one line (exit status 2)."""


class NumericalError(KinemaError):
    """Non-finite latents inside the loop, or non-finite decoded pixels."""


def require(condition: bool, message: str) -> None:
    """Raise `KinemaError(message)` unless `condition` holds."""
    if not condition:
        raise KinemaError(message)
