"""Domain errors of the batch stages.

Every error a user can cause or meet carries the process exit code the CLIs return for it,
so a CronJob's status (and a shell script) can tell a bad credential from a flaky network.
The mapping lives on the classes; `pipelines.cli.run` is the one place that applies it (to
every `contracts.errors.ProjectError`, the recommenders' errors included).
"""

from __future__ import annotations

from contracts.errors import ProjectError


class PipelineError(ProjectError):
    """Base class: a failure with a message meant for the person running the stage."""

    exit_code: int = 1


class ConfigError(PipelineError):
    """Flags or environment are invalid (exit 2, like a usage error)."""

    exit_code = 2


class SnapshotNotFoundError(PipelineError):
    """A named or `latest` snapshot does not exist."""

    exit_code = 3


class SnapshotCorruptError(PipelineError):
    """A snapshot's files do not match the checksums in its manifest."""

    exit_code = 3


class InputValidationError(PipelineError):
    """An input batch failed validation; nothing was published.

    `report` holds the human-readable table of failing rows and reasons.
    """

    exit_code = 4

    def __init__(self, message: str, report: str = "") -> None:
        super().__init__(message if not report else f"{message}\n{report}")
        self.report = report


class TMDBPermanentError(PipelineError):
    """TMDB answered with a status that retrying cannot fix (400, 401, 404)."""

    exit_code = 5


class TMDBAuthError(TMDBPermanentError):
    """The TMDB credential was rejected (401) or none was given."""

    exit_code = 6


class TMDBUnavailableError(PipelineError):
    """A page still failed after all retries (429/5xx/timeouts/connection errors)."""

    exit_code = 7


class TrackingUnavailableError(PipelineError):
    """The MLflow tracking server could not be reached after bounded retries."""

    exit_code = 8


class TrackingRejectedError(PipelineError):
    """The MLflow server answered and refused a call (a bad request, a missing version)."""

    exit_code = 11


class QualityGateError(PipelineError):
    """A newly trained version is worse than `champion` beyond the tolerance."""

    exit_code = 9


class RolloutError(PipelineError):
    """A canary, promote or rollback step could not be carried out."""

    exit_code = 10


class StackDownError(RolloutError):
    """The local stack (its controller) is not running: nothing can be observed or changed."""
