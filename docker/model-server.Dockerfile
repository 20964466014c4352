# syntax=docker/dockerfile:1.7
# movie-mlops/model-server: the KServe custom predictor on :8080.
# Only what serving needs: requirements-serving.lock (compiled within requirements.lock, so the
# versions match the pipelines image; mlflow-skinny, no MLflow server, no dev tools) and the
# model_server, recommenders and contracts packages.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements-serving.lock ./
RUN pip install --no-deps --require-hashes -r requirements-serving.lock
COPY contracts ./contracts
COPY recommenders ./recommenders
COPY model_server ./model_server
# the three packages only (pyproject.toml would install every package of the repo)
RUN SITE="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && cp -r contracts recommenders model_server "$SITE"/

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
# The code version every stage records as lineage (scripts/images.sh passes the git sha).
ARG GIT_SHA=unknown
ENV GIT_SHA=${GIT_SHA}
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["python", "-m", "model_server"]
CMD ["--model_name", "movie-recommender", "--model_dir", "/mnt/models", "--http_port", "8080"]
