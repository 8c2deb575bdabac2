# syntax=docker/dockerfile:1.7
# Training image: TensorFlow (CPU), tf2onnx, scikit-learn. Writes bundles into the model store.
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
RUN pip install --no-cache-dir -e ".[serving,training]"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="pm25-forecaster training"
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TF_CPP_MIN_LOG_LEVEL=2
RUN groupadd --gid 10001 pm25 && useradd --uid 10001 --gid pm25 --create-home --shell /usr/sbin/nologin pm25
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=pm25:pm25 /app /app
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["pm25"]
CMD ["train", "--grid", "default"]
