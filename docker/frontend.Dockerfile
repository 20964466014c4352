# syntax=docker/dockerfile:1.7
# movie-mlops/frontend: the built React page behind nginx-unprivileged on :8080; the inference
# routes are proxied to the predictor (see docker/frontend/default.conf.template).
ARG NODE_IMAGE=node:20.19.4-bookworm-slim@sha256:6db5e436948af8f0244488a1f658c2c8e55a3ae51ca2e1686ed042be8f25f70a
ARG NGINX_IMAGE=nginxinc/nginx-unprivileged:1.28.0-alpine@sha256:c97ff0bf7cbae369953c6da1232ec14ad9f971d66360c5698db0856a4cd657a0

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY frontend/ ./
RUN npm run build

FROM ${NGINX_IMAGE}
# The entrypoint renders /etc/nginx/templates/*.template into /etc/nginx/conf.d (an emptyDir in
# the cluster, the root filesystem being read-only) and, with LOCAL_RESOLVERS, exports the pod's
# DNS server so the proxy re-resolves the predictor's name at request time.
ENV NGINX_ENTRYPOINT_LOCAL_RESOLVERS=1 \
    PREDICTOR_UPSTREAM=http://127.0.0.1:8081 \
    PREDICTOR_HOST=localhost \
    POSTER_BASE_URL=https://image.tmdb.org/t/p
# CANARY_PERCENT -> CANARY_SPLIT (the sticky canary arms), sourced before the templates render
ENV CANARY_PERCENT=0 \
    EVENTS_UPSTREAM=http://127.0.0.1:8070
COPY --chmod=0755 docker/frontend/canary-split.envsh /docker-entrypoint.d/16-canary-split.envsh
COPY docker/frontend/default.conf.template /etc/nginx/templates/default.conf.template
COPY --from=build /src/dist /usr/share/nginx/html
USER 10001:10001
EXPOSE 8080
