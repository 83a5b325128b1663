"""Errors that carry a message fit for a user: what was wrong, where, and what to do."""


class ConductorError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ConductorError):
    """A manifest, worker or conductor setting is wrong."""


class WorkflowError(ConductorError):
    """A workflow does not fit the registry or the rules of a workflow."""


class RunNotFound(ConductorError):
    """No run with that id in the store."""


class RunStateError(ConductorError):
    """The run cannot do what was asked in its present state (owned elsewhere, not runnable, ...)."""


class LeaseLost(RunStateError):
    """Another process has taken the run over: this one must stop calling workers and writing to it."""


class WorkerError(ConductorError):
    """A worker call failed; `retryable` tells whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
