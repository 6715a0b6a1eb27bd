# syntax=docker/dockerfile:1
#
# One Dockerfile, one image per service. The three services share every layer but the
# last; a build target picks the service (and with it CMD, EXPOSE and the health check):
#
#   docker build --target live-orders -t livecommerce/live-orders:dev .
#   docker build --target inventory   -t livecommerce/inventory:dev .
#   docker build --target notifier    -t livecommerce/notifier:dev .
#
# Without --target the last stage (live-orders) is built. deploy/compose/compose.yaml
# builds all three; docs/deploy.md has the rest.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ------------------------------------------------------------------ build: the virtualenv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# Every pinned requirement ships a manylinux wheel for CPython 3.11 (x86_64 and aarch64),
# so no compiler is needed here; --only-binary keeps it that way (a missing wheel fails
# the build instead of silently pulling in a toolchain).
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --only-binary=:all: -r /tmp/requirements.txt

# ------------------------------------------------------------------ runtime: shared base
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1
# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
# The repository layout is kept: services.common.schemas loads <repo>/schemas, i.e.
# /app/schemas next to /app/services. Files stay owned by root (read-only for the app).
WORKDIR /app
COPY services/ /app/services/
COPY schemas/ /app/schemas/
# Byte-code compiled at build time: the app user cannot (and should not) write to /app.
RUN python -m compileall -q /app/services
# Liveness of the process only (GET /healthz); orchestration (compose, Kubernetes) adds
# readiness on /readyz itself. SERVICE_NAME picks the port variable, as Settings does.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; s = os.environ['SERVICE_NAME']; p = os.environ.get('LC_' + s.upper() + '_PORT') or {'live_orders': '8081', 'inventory': '8082', 'notifier': '8083'}[s]; u.urlopen('http://127.0.0.1:' + p + '/healthz', timeout=2)"]
USER 10001:10001
# SIGTERM (the default) makes aiohttp shut down gracefully: consumers finish their batch,
# commit and leave their group, the producer flushes.
STOPSIGNAL SIGTERM

# ------------------------------------------------------------------ one stage per service
FROM runtime AS inventory
ENV SERVICE_NAME=inventory
EXPOSE 8082
CMD ["python", "-m", "services.inventory"]

FROM runtime AS notifier
ENV SERVICE_NAME=notifier
EXPOSE 8083
CMD ["python", "-m", "services.notifier"]

FROM runtime AS live-orders
ENV SERVICE_NAME=live_orders
EXPOSE 8081
CMD ["python", "-m", "services.live_orders"]
