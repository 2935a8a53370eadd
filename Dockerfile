# One small image per service, each a build target of this file:
#   docker build --target gateway -t roomcast-gateway .   # `roomcast-gateway`: the WebSocket edge
#   docker build --target ingest  -t roomcast-ingest  .   # `roomcast-ingest`: Kafka -> NATS
#   docker build --target cli     -t roomcast         .   # `roomcast <cmd>`: bench, dev, watch, ...
# `make image` builds all three (docker when an engine answers, else podman; docs/deploy.md).
# Each image holds only its package and that package's locked dependencies: the gateway image has
# no devstack, no Kafka jars and no nats-server binary. Dependencies are installed from uv.lock in a
# layer of their own before the code is copied, so a code change does not reinstall them.
#
# Build arguments (defaults: the public images):
#   BASE_IMAGE     a Debian-based image with Python 3.11 on PATH (python3 and its venv module)
#   UV_IMAGE       an image with the uv binary at /uv
#   SSL_CERT_FILE  a CA bundle path for uv, where the package index is reached through a private CA
#                  (mount the bundle at the same path into the build; unset: the base image's CAs)
ARG BASE_IMAGE=python:3.11-slim
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${BASE_IMAGE} AS uv-base
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON_PREFERENCE=only-system UV_CACHE_DIR=/root/.cache/uv
ARG SSL_CERT_FILE=""
ENV SSL_CERT_FILE=${SSL_CERT_FILE}
WORKDIR /app
COPY pyproject.toml uv.lock ./

# ---- dependencies of one package, from the lockfile (no workspace code yet) -------------------
# --frozen: the members' pyproject.toml files are not here yet; the code layer below re-checks the
# lock with --locked.
FROM uv-base AS deps-gateway
RUN --mount=type=cache,target=/root/.cache/uv \
    [ -n "$SSL_CERT_FILE" ] || unset SSL_CERT_FILE; \
    uv sync --frozen --no-dev --no-install-workspace --package roomcast-gateway

FROM uv-base AS deps-ingest
RUN --mount=type=cache,target=/root/.cache/uv \
    [ -n "$SSL_CERT_FILE" ] || unset SSL_CERT_FILE; \
    uv sync --frozen --no-dev --no-install-workspace --package roomcast-ingest

FROM uv-base AS deps-cli
RUN --mount=type=cache,target=/root/.cache/uv \
    [ -n "$SSL_CERT_FILE" ] || unset SSL_CERT_FILE; \
    uv sync --frozen --no-dev --no-install-workspace --package roomcast-cli

# ---- the code: the workspace packages, installed (not editable) over those dependencies -------
FROM deps-gateway AS build-gateway
COPY libs libs
COPY services services
RUN --mount=type=cache,target=/root/.cache/uv \
    [ -n "$SSL_CERT_FILE" ] || unset SSL_CERT_FILE; \
    uv sync --locked --no-dev --no-editable --package roomcast-gateway

FROM deps-ingest AS build-ingest
COPY libs libs
COPY services services
RUN --mount=type=cache,target=/root/.cache/uv \
    [ -n "$SSL_CERT_FILE" ] || unset SSL_CERT_FILE; \
    uv sync --locked --no-dev --no-editable --package roomcast-ingest

FROM deps-cli AS build-cli
COPY libs libs
COPY services services
RUN --mount=type=cache,target=/root/.cache/uv \
    [ -n "$SSL_CERT_FILE" ] || unset SSL_CERT_FILE; \
    uv sync --locked --no-dev --no-editable --package roomcast-cli

# ---- runtime: the base image, the venv, a non-root user -----------------------------------------
FROM ${BASE_IMAGE} AS runtime
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001

FROM runtime AS gateway
COPY --from=build-gateway /app/.venv /app/.venv
EXPOSE 8080
ENTRYPOINT ["roomcast-gateway"]

FROM runtime AS ingest
COPY --from=build-ingest /app/.venv /app/.venv
EXPOSE 9464
ENTRYPOINT ["roomcast-ingest"]

FROM runtime AS cli
COPY --from=build-cli /app/.venv /app/.venv
ENTRYPOINT ["roomcast"]
