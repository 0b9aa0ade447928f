#!/bin/sh
# The image's entrypoint: seed the writable numba cache from the one compiled at build time (numba
# loads a cache only from a directory it can write), then run `pipeline` with the arguments given.
set -eu
seed="${PIPELINE_NUMBA_CACHE_SEED:-}"
if [ -n "$seed" ] && [ -d "$seed" ] && [ -n "${NUMBA_CACHE_DIR:-}" ] && [ ! -d "$NUMBA_CACHE_DIR" ]; then
    mkdir -p "$NUMBA_CACHE_DIR" && cp -R "$seed/." "$NUMBA_CACHE_DIR/"
fi
exec pipeline "$@"
