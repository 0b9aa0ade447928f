# The pipeline as a batch job: `docker compose run --rm job` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/var/cache/numba \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
RUN pip install . \
    && mkdir -p /var/cache/numba \
    # compile the training kernel once, at build time, into the image's numba cache; from /,
    # so the installed package is compiled (numba keys its cache by the source's path)
    && cd / && python -m pipeline.nn.kernels && rm -rf /app/pipeline \
    && chmod -R a+rwX /var/cache/numba

# an unprivileged user; shards and runs live on mounted volumes
RUN useradd --create-home --uid 1000 pipeline \
    && mkdir -p /shards /runs && chown pipeline:pipeline /shards /runs
USER pipeline
WORKDIR /work

ENTRYPOINT ["pipeline"]
CMD ["--help"]
