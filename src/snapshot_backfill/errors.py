"""The exceptions the library raises; the CLI turns each into a message and an exit code."""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_LOCKED = 3
EXIT_INTERRUPTED = 130


class BackfillError(Exception):
    """Base of every error this tool reports to a user; carries the process exit code."""

    exit_code = EXIT_BAD_INPUT


class BadInputError(BackfillError):
    """The input (a URL, a path, a file, an option) cannot be used; nothing was changed."""


class DatabaseUnavailableError(BadInputError):
    """The database cannot be opened or reached; nothing was changed."""


class SchemaMissingError(BadInputError):
    """The database lacks tables or columns the command needs."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


class SampleDataError(BadInputError):
    """A sample data file is malformed; names the file and the JSON path of the bad value."""

    def __init__(self, path: str, json_path: str, problem: str) -> None:
        super().__init__(f"{path}: {json_path}: {problem}")
        self.path = path
        self.json_path = json_path
        self.problem = problem


class RunAbortedError(BackfillError):
    """A batch could not be written as read (every run refused, or runs changed meanwhile).

    The batch was rolled back and the run stopped; the batches committed before are kept.
    """

    exit_code = EXIT_FAILED


class LockedError(BackfillError):
    """Another migrator holds the migration lock."""

    exit_code = EXIT_LOCKED


class InterruptedRunError(BackfillError):
    """The run was interrupted; committed batches are kept and ``report`` says how far it got."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report
