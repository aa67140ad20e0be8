"""Logging: one line per action, to stderr, and to syslog when stderr is not a terminal.

Callers receive a `Log` and call it as ``log("info", "job 12: created ...")``; hooks and
adapters take the same callable.
"""

from __future__ import annotations

import os
import sys

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_SYSLOG_PRIO = {"debug": 7, "info": 6, "warning": 4, "error": 3}


def escape(msg: str) -> str:
    """`msg` with what cannot be written as text made visible: a byte of a non-UTF-8 file
    name (a surrogate escape) becomes ``\\xNN``, other control characters ``\\xNN`` or
    ``\\uNNNN``; line breaks and tabs stay. The result always encodes as UTF-8."""
    if msg.isprintable():
        return msg
    out = []
    for ch in msg:
        if ch.isprintable() or ch in "\n\t":
            out.append(ch)
            continue
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:          # os.fsdecode's escape of a byte >= 0x80
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x100:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out)


class Log:
    def __init__(self, level: str = "info", *, use_syslog: bool | None = None,
                 stream=None, tag: str = "jobns"):
        self.threshold = LEVELS[level]
        self.stream = stream if stream is not None else sys.stderr
        if use_syslog is None:
            try:
                use_syslog = not os.isatty(self.stream.fileno())
            except (AttributeError, OSError, ValueError):
                use_syslog = False
        self._syslog = None
        if use_syslog:
            import syslog
            syslog.openlog(tag, syslog.LOG_PID, syslog.LOG_DAEMON)
            self._syslog = syslog
        self.tag = tag

    def __call__(self, level: str, msg: str) -> None:
        if LEVELS[level] < self.threshold:
            return
        msg = escape(msg)
        line = f"{self.tag}: {level}: {msg}" if level != "info" else f"{self.tag}: {msg}"
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass
        if self._syslog is not None:
            self._syslog.syslog(_SYSLOG_PRIO[level], f"{level}: {msg}")

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold


def null_log(level: str, msg: str) -> None:
    """A log that drops everything (tests, library use)."""
