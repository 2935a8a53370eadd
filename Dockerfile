# One image per build target:
#   docker build -t roomcast .                                  # every service, `roomcast <cmd>`
#   docker build -t roomcast-gateway --build-arg PACKAGE=roomcast-gateway .   # gateway only
# PACKAGE picks the workspace member; uv installs it and only its own dependencies.
FROM python:3.11-slim AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
COPY pyproject.toml uv.lock ./
COPY libs libs
COPY services services
ARG PACKAGE=roomcast-cli
RUN uv sync --locked --no-dev --no-editable --package "${PACKAGE}"

FROM python:3.11-slim
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
ENTRYPOINT ["roomcast"]
