# journey: one image for the worker, the sidecar and the CLI.
#   docker build -t journey .
#   docker run --rm -e JOURNEY_BOOTSTRAP_SERVERS=kafka:9092 journey worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JOURNEY_SCHEMAS_DIR=/app/schemas \
    JOURNEY_DATA_DIR=/var/lib/journey \
    JOURNEY_WEB_BIND=0.0.0.0 \
    JOURNEY_SIDECAR_HOST=0.0.0.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY schemas ./schemas
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /var/lib/journey journey \
    && mkdir -p /var/lib/journey && chown journey /var/lib/journey

USER journey
# 6066: worker (metrics, customer lookups routed between workers); 8000: sidecar.
EXPOSE 6066 8000
ENTRYPOINT ["journey"]
CMD ["worker"]
