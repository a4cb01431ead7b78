"""User-facing errors.

Every error hubft raises on bad input is a :class:`HubftError`: one line that says what was wrong, followed by
what to do about it. The CLI prints ``str(error)`` and exits non-zero without a traceback (``--debug`` shows it).
They subclass ``ValueError`` so that callers who validate input the Python way can catch them as such.
"""

from __future__ import annotations


class HubftError(ValueError):
    """Bad input or a state hubft cannot continue from, with the cause and the fix.

    Args:
        message: What was wrong, naming the offending value, key, file or step.
        fix: What the user should do about it. Appended to the message as ``" Fix: ..."``.

    Examples:
        >>> raise HubftError("unknown loss 'dcie'", fix="use one of: dice, focal")
        Traceback (most recent call last):
        ...
        hubft.errors.HubftError: unknown loss 'dcie'. Fix: use one of: dice, focal
    """

    exit_code = 2

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message.rstrip(".")
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.message}. Fix: {self.fix}" if self.fix else f"{self.message}."


class ConfigError(HubftError):
    """A configuration key, value or combination of values is invalid."""


class ModelError(HubftError):
    """A backbone cannot be created, loaded or re-headed as asked."""


class WeightsError(ModelError):
    """A weights file is missing, truncated, corrupt, unsafe, or does not fit the model."""


class DataError(HubftError):
    """A dataset cannot be loaded or does not have the columns / labels asked for."""


class HubError(HubftError):
    """Talking to the Hub failed in a way the user can act on (down, unauthorised, bad repo id)."""


class CheckpointError(HubftError):
    """A checkpoint is incomplete, corrupt or incompatible with the current config."""


class TrainingError(HubftError):
    """Training cannot continue (e.g. a non-finite loss); the last good checkpoint is kept."""

    exit_code = 3


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """The text of ``error`` on one line, whitespace runs folded to one space, cut to ``limit`` characters.

    What hubft shows of a library's own message inside one of its errors: a multi-line message from torch or a
    server would otherwise break the one-line error the CLI prints.

    Examples:
        >>> one_line(ValueError("shape mismatch:\\n  expected 3\\n  got 4"))
        'shape mismatch: expected 3 got 4'
    """
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unwrap_worker_error(error: HubftError) -> HubftError:
    """The one-line error inside one that torch re-raised from a DataLoader worker; ``error`` itself otherwise.

    torch folds the worker's traceback into the message, which ends with ``hubft.errors.<Type>: <message>. Fix:
    <fix>``; the same type is rebuilt from that line.
    """
    text = str(error)
    if "\n" not in text:
        return error
    last = next((line for line in reversed(text.splitlines()) if line.startswith("hubft.errors.") and ": " in line),
                None)
    if last is None:
        return error
    message, _, fix = last.split(": ", 1)[1].partition(". Fix: ")
    return type(error)(message, fix=fix or None)
