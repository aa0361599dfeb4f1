# smartpark: one image for every service (ingest, api, alerts, simulate, db init); the command picks the service.
# Multi-stage: the build stage installs the package into a virtualenv, the runtime stage copies only that.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/smartpark
WORKDIR /src
COPY pyproject.toml README.md ./
COPY smartpark smartpark
COPY core core
COPY ingest ingest
COPY api api
COPY alerts alerts
COPY simulators simulators
COPY hj212 hj212
# the postgres extra: the PostgreSQL driver, for SMARTPARK_DATABASE_URL=postgresql+psycopg://...
RUN /opt/smartpark/bin/pip install ".[postgres]" && /opt/smartpark/bin/smartpark --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
# WeasyPrint (the monthly report's PDF) renders with Pango
RUN apt-get update && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 \
    && rm -rf /var/lib/apt/lists/*
# a fixed non-root uid/gid so volume ownership is predictable across rebuilds
RUN groupadd --system --gid 10001 smartpark \
    && useradd --system --uid 10001 --gid smartpark --home-dir /var/lib/smartpark --shell /usr/sbin/nologin smartpark \
    && mkdir -p /var/lib/smartpark /var/lib/smartpark-meta /srv/mosquitto-auth \
    && chown smartpark:smartpark /var/lib/smartpark /var/lib/smartpark-meta /srv/mosquitto-auth
COPY --from=build /opt/smartpark /opt/smartpark
ENV PATH=/opt/smartpark/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SMARTPARK_DATA_DIR=/var/lib/smartpark
USER smartpark
WORKDIR /var/lib/smartpark
# the ingest's spool and dead letters: one volume per container, so scaled replicas never share a spool
VOLUME ["/var/lib/smartpark"]
EXPOSE 8000 9108
ENTRYPOINT ["smartpark"]
CMD ["--help"]
