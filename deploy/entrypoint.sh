#!/bin/sh
# The image's entrypoint: seed the writable numba cache from the one compiled at build time (numba
# loads a cache only from a directory it can write), then run `pipeline` with the arguments given.
# MPI ranks sharing a pod run it at once: each copies into a directory of its own, and the first
# rename wins (rename(2) replaces only an empty directory), so none sees half a copy.
set -eu
seed="${PIPELINE_NUMBA_CACHE_SEED:-}"
if [ -n "$seed" ] && [ -d "$seed" ] && [ -n "${NUMBA_CACHE_DIR:-}" ] && [ ! -d "$NUMBA_CACHE_DIR" ]; then
    mkdir -p "$(dirname "$NUMBA_CACHE_DIR")"
    part=$(mktemp -d "$NUMBA_CACHE_DIR.XXXXXX")
    cp -R "$seed/." "$part/"
    mv -T "$part" "$NUMBA_CACHE_DIR" 2>/dev/null || rm -rf "$part"
fi
exec pipeline "$@"
