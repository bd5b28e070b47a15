# llm-router: one image for every instance. Install steps are the tested ones (`pip install .`, as in
# the README and .ci/run); see README "Scaling out" for what was verified without a Docker engine.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    SERVER_HOST=0.0.0.0 \
    SERVER_PORT=3000

WORKDIR /app
COPY pyproject.toml README.md ./
COPY router ./router
COPY graphql_schema ./graphql_schema
RUN pip install . \
    && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin router \
    && mkdir -p /data \
    && chown router:router /data

# SQLite databases (when CORE_DB_URL/ANALYTICS_DB_URL are not set) live here.
VOLUME /data
USER router
EXPOSE 3000

HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SERVER_PORT', '3000'), timeout=4)" || exit 1

# SIGTERM (docker stop) is a graceful stop: in-flight requests finish and the request log is
# flushed, for up to SHUTDOWN_GRACE_S (30 s); give `docker stop` / compose more than that.
STOPSIGNAL SIGTERM
CMD ["llm-router", "serve"]
