"""Domain errors of the recommenders package.

They extend `contracts.errors.ProjectError`, so a batch CLI turns them into an exit code
(`exit_code`), and each names the HTTP status a model server should answer with
(`http_status`); the server registers that mapping in one place.
"""

from __future__ import annotations

from contracts.errors import ProjectError


class RecommenderError(ProjectError):
    """Base class of the recommenders' errors."""

    exit_code = 1
    http_status = 500


class UnknownModelError(RecommenderError):
    """A model name that is not in `recommenders.registry.MODELS` (a usage error)."""

    exit_code = 2
    http_status = 400


class HyperparameterError(RecommenderError):
    """A trainer was given a hyperparameter outside its valid range (a usage error)."""

    exit_code = 2
    http_status = 400


class TrainingDataError(RecommenderError):
    """The interactions cannot be trained on (missing columns, no rows, bad ids)."""

    exit_code = 4
    http_status = 422


class ModelTooLargeError(RecommenderError):
    """A fit would need more memory than is available (exit 13); nothing was allocated.

    The message says what is needed, what is available and which parameter bounds it.
    """

    exit_code = 13
    http_status = 507


class InvalidRequestError(RecommenderError):
    """A scoring request is malformed (e.g. ``k < 1``); the caller must change it."""

    exit_code = 2
    http_status = 400


class ArtifactError(RecommenderError):
    """A model artefact cannot be loaded: a file is missing or its format is unknown.

    A server that meets it is not ready (503) rather than broken for one request.
    """

    exit_code = 3
    http_status = 503


class ArtifactCorruptError(ArtifactError):
    """An artefact file does not match `checksums.json` or cannot be parsed."""
