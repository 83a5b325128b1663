"""Errors that carry a message fit for a user: what was wrong, where, and what to do."""


class ConductorError(Exception):
    """Base of every error this package raises on purpose."""


class UsageError(ConductorError):
    """The command line asks for what cannot be: an empty task, a run id that names no run or several, a
    worker or strategy the pool lacks. The CLI exits 2 for these (and argparse's own), 1 for the rest."""


class ConfigError(ConductorError):
    """A manifest, worker or conductor setting is wrong."""


class WorkflowError(ConductorError):
    """A workflow does not fit the registry or the rules of a workflow."""


class RunNotFound(ConductorError):
    """No run with that id in the store."""


class EvalNotFound(ConductorError):
    """No recorded eval with that id in the store."""


class RunStateError(ConductorError):
    """The run cannot do what was asked in its present state (owned elsewhere, not runnable, ...)."""


class LeaseLost(RunStateError):
    """Another process has taken the run over: this one must stop calling workers and writing to it."""

    def __init__(self, message: str, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id  # the run taken over


class ParentLeaseLost(LeaseLost):
    """The run this one is part of (recursion, a round) was taken over: this one is still this process's, and is
    handed back, for the parent's new owner to claim at once."""


class ShuttingDown(RunStateError):
    """This server was told to stop (SIGTERM) and takes no new runs: retry, and a balancer sends the retry to
    another replica."""


class WorkerError(ConductorError):
    """A worker call failed; `retryable` tells whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class NoTextContent(WorkerError):
    """The provider answered, but with no text content (content null): a step fails on it (and may retry); a probe
    that only asks whether the worker answers counts it as an answer."""


class StoreError(ConductorError):
    """The trace store cannot be opened, is damaged, or is read-only and was asked to write."""


def leaf_error(exc: BaseException) -> BaseException:
    """The first exception inside task groups' exception groups (`exc` itself when it is none)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def internal_message(exc: BaseException) -> str:
    """One line for an error nobody raised on purpose: its type and first line, keys masked. The traceback
    belongs in the log, not in a tool result or a terminal."""
    from .redact import redact

    leaf = leaf_error(exc)
    first = (str(leaf).strip().splitlines() or [""])[0][:300]
    where = " in the trace store (`mcp-conductor doctor` checks it)" if (
        type(leaf).__module__.partition(".")[0] in ("sqlite3", "psycopg", "psycopg_pool")) else ""
    return redact(f"internal error{where}: {type(leaf).__name__}" + (f": {first}" if first else ""))
