# latentwatch: the pipeline, simulator and alert subscribers in one image.
#   docker build -t latentwatch:local .
#   docker run --rm latentwatch:local --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# CPU-only PyTorch first (the default wheel pulls gigabytes of CUDA libraries); set
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 for a GPU image.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.2"

# Then the package (what is copied is limited by .dockerignore).
COPY . /app
RUN pip install "/app[protobuf]" \
    && useradd --create-home --uid 10001 latentwatch \
    && mkdir -p /models \
    && chown latentwatch /models

USER latentwatch
# /metrics of `latentwatch run` (bind it to 0.0.0.0 with LATENTWATCH_METRICS__HOST in a container)
EXPOSE 9464
ENTRYPOINT ["latentwatch"]
CMD ["--help"]
