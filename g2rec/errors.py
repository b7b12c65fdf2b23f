"""The one error family of g2rec. Every project exception derives from G2RecError; its message
names the input that caused it and, where there is one, the fix. The `g2rec` command translates a
G2RecError, in one place (cli/group.py), into a one-line message and exit status 2.

Errors about a bad argument also derive from ValueError (or the matching builtin), so library
callers that catch the builtin keep working.

>>> e = ConfigError("train.lr", "must be positive, got -1")
>>> str(e)
'train.lr: must be positive, got -1'
>>> isinstance(e, ValueError) and isinstance(e, G2RecError)
True
>>> str(G2RecError("runs/x: not a run directory", fix="run `g2rec train --out runs/x` first"))
'runs/x: not a run directory (fix: run `g2rec train --out runs/x` first)'
"""

from __future__ import annotations


class G2RecError(Exception):
    """Base of every g2rec error. `fix`, when given, tells the user what to do about it."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class ConfigError(G2RecError, ValueError):
    """A configuration is invalid: `where` names the file, key path or value, `problem` what is
    wrong (or `where` alone is the whole message)."""

    def __init__(self, where: str, problem: str | None = None, fix: str | None = None) -> None:
        super().__init__(f"{where}: {problem}" if problem else where, fix)
        self.where = where


class DataError(G2RecError, ValueError):
    """Input data (a dataset file, a snapshot, a request) is missing or malformed."""


class NotFoundError(G2RecError, FileNotFoundError):
    """A file or directory the user named does not exist or is not what was expected."""


class UnavailableError(G2RecError, ConnectionError):
    """A server (Kafka broker, Redis, Postgres, feast serve) cannot be reached or started."""


class StateError(G2RecError, RuntimeError):
    """A store or service is not in the state the operation needs (e.g. not applied yet)."""
