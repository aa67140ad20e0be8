"""What a scheduler (or the standalone CLI) tells jobns about a job."""

from __future__ import annotations

from jobns.errors import UsageError
from jobns.values import Frozen

# Slurm job ids are decimal and below NO_VAL (0xfffffffe). Standalone jobs may also use a
# name; it must be safe as a single path component and cannot look like an option.
_MAX_NUMERIC = 0xFFFFFFFD
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def validate_job_id(text: str) -> str:
    """Return the canonical job id or raise UsageError naming what is wrong."""
    if not isinstance(text, str) or not text:
        raise UsageError("job id: empty")
    if text.isascii() and text.isdigit():
        if text != str(int(text)):
            raise UsageError(f"job id {text!r}: leading zeros are not allowed")
        value = int(text)
        if not 1 <= value <= _MAX_NUMERIC:
            raise UsageError(f"job id {text!r}: must be between 1 and {_MAX_NUMERIC}")
        return text
    if (len(text) <= 64 and text[0].isascii() and text[0].isalpha()
            and _NAME_CHARS.issuperset(text) and not text.endswith(".")):
        return text
    raise UsageError(
        f"job id {text!r}: must be a decimal Slurm job id or a name of letters, digits, "
        "'_', '.', '-' starting with a letter (at most 64 characters)")


# A uid or gid is 0..0xFFFFFFFE: (uid_t)-1 means "no change" to setuid/chown, never an id.
MAX_ID = 0xFFFFFFFE


def is_numeric_id(text: str) -> bool:
    """Whether `text` is a uid/gid written as a decimal number in range."""
    return isinstance(text, str) and 0 < len(text) <= 10 and text.isascii() and \
        text.isdigit() and int(text) <= MAX_ID


def parse_id(text: str, what: str) -> int:
    """A uid or gid given as text (an option's value, a variable): the number, or a
    UsageError naming `what` and the value."""
    if not is_numeric_id(text):
        raise UsageError(f"{what} {text!r}: not a valid id (a decimal number from 0 to "
                         f"{MAX_ID})")
    return int(text)


def is_slurm_job_id(name: str) -> bool:
    return name.isascii() and name.isdigit() and name == str(int(name)) and \
        1 <= int(name) <= _MAX_NUMERIC


class Job(Frozen):
    """A job as the lifecycle sees it.

    `env` carries the scheduler's job variables that hook scripts receive
    (SLURM_JOB_WORK_DIR, SLURM_JOB_MEM, SLURM_NODE_ALIASES, SLURM_HET_JOB_ID, ...).
    """

    job_id: str
    uid: int
    gid: int
    user: str
    env: dict[str, str] | None = None

    _nocompare = ("env",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "env", dict(self.env or {}))
