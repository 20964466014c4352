# syntax=docker/dockerfile:1.7
# movie-mlops/pipelines: crawl, features, train, rollout, the TMDB sandbox and the MLflow server.
# Build from the repository root: docker build -f docker/pipelines.Dockerfile -t movie-mlops/pipelines:TAG .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock ./
RUN pip install --no-deps --require-hashes -r requirements.lock
COPY pyproject.toml ./
COPY contracts ./contracts
COPY recommenders ./recommenders
COPY pipelines ./pipelines
COPY model_server ./model_server
COPY tmdb_sandbox ./tmdb_sandbox
RUN pip install --no-deps .

FROM ${PYTHON_IMAGE}
# HOME and MPLCONFIGDIR point at /tmp: the root filesystem is read-only in the cluster and /tmp
# is the emptyDir every manifest mounts.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    DATA_DIR=/data
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
# The code version every stage records as lineage (scripts/images.sh passes the git sha).
ARG GIT_SHA=unknown
ENV GIT_SHA=${GIT_SHA}
USER 10001:10001
WORKDIR /tmp
CMD ["python", "-m", "pipelines.crawl", "--help"]
