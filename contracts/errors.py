"""The base error every package's domain errors extend."""

from __future__ import annotations


class ProjectError(Exception):
    """A failure with a message meant for the person (or caller) who caused or met it.

    ``exit_code`` is what a CLI returns for it (one place applies it: `pipelines.cli.run`);
    ``http_status`` is what a server answers with (one place maps it: the model server's
    error handlers).
    """

    exit_code: int = 1
    http_status: int = 500
