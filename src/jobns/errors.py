"""Error types shared by every layer.

Exit codes of the CLI follow from the type: 2 for usage and configuration errors,
1 for an operation that failed.
"""

from __future__ import annotations

import errno as _errno


class JobnsError(Exception):
    """Base class; `exit_code` is what the CLI returns for it."""

    exit_code = 1


class UsageError(JobnsError):
    exit_code = 2


class ConfigError(JobnsError):
    """A configuration problem, located as precisely as the source allows.

    str() gives ``FILE:LINE: key: message (hint)``; missing parts are left out.
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None, hint: str | None = None):
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.file:
            where = self.file
            if self.line:
                where += f":{self.line}"
            where += ": "
        key = f"{self.key}: " if self.key else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{key}{self.message}{hint}"


class OperationError(JobnsError):
    """A lifecycle step failed: names the step, the path and the errno."""

    exit_code = 1

    def __init__(self, step: str, message: str, *, path: str | None = None,
                 errno: int | None = None):
        self.step = step
        self.path = path
        self.errno = errno
        self.message = message
        super().__init__(self.format())

    def format(self) -> str:
        parts = [self.step]
        if self.path:
            parts.append(self.path)
        text = ": ".join(parts) + ": " + self.message
        if self.errno:
            text += f" [{errno_name(self.errno)}]"
        return text

    @classmethod
    def from_oserror(cls, step: str, exc: OSError, path: str | None = None) -> "OperationError":
        return cls(step, exc.strerror or str(exc), path=path or exc.filename, errno=exc.errno)


def errno_name(num: int) -> str:
    return _errno.errorcode.get(num, str(num))
