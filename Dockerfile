# syntax=docker/dockerfile:1
# The pipeline as a scheduled batch job (README "Scheduled runs"). Runs as uid 1000 on a read-only
# root file system: everything it writes goes to /shards, /runs (volumes) or /tmp (a tmpfs).
# The base is pinned to a patch release; pin its digest too where you build (FROM ...@sha256:...).
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
RUN pip install . && rm -rf /src/*

# Compile every kernel (every preset's: the original recipe's and the general step's, both dtypes)
# once, into a cache outside the package. From /, so that the installed package is what gets
# compiled (numba keys its cache by the source file's path). numba reads a cache only from a
# writable directory, so the entrypoint copies this one to $NUMBA_CACHE_DIR.
WORKDIR /
RUN NUMBA_CACHE_DIR=/opt/numba-cache python -m pipeline.nn.warm \
    && chmod -R a+rX /opt/numba-cache \
    && mkdir -p /shards /runs && chown 1000:1000 /shards /runs
COPY --chmod=755 deploy/entrypoint.sh /usr/local/bin/pipeline-entrypoint

ENV HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    PIPELINE_NUMBA_CACHE_SEED=/opt/numba-cache
USER 1000:1000
WORKDIR /tmp

ENTRYPOINT ["pipeline-entrypoint"]
CMD ["--help"]
