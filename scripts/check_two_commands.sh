#!/usr/bin/env bash
# The README's two commands, word for word as README.md has them, on fresh clones of this
# repository: the main job, the tests, then both again; and the tests first, then the main job,
# then both again. Every step must succeed (a numba cache written into site-packages once made
# the tests' `pip install -e .` leave a stale package that broke every later `pipeline`).
# The tests are cut to a few through PYTEST_ADDOPTS to keep this cheap: CI runs them all once.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

block() {  # the Nth ```sh block of the README's "Two commands" section
    awk -v n="$1" '
        /^## / { inside = ($0 == "## Two commands") }
        inside && /^```sh/ { k++; take = (k == n); next }
        inside && /^```/ { take = 0 }
        inside && take' "$repo/README.md"
}
main_job="$(block 1)"
tests="$(block 2)"
if [ -z "$main_job" ] || [ -z "$tests" ]; then
    echo "error: README.md: the two commands of 'Two commands' not found" >&2
    exit 1
fi
export PYTEST_ADDOPTS="-q -p no:cacheprovider tests/test_cli.py -k 'version or importing'"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
started=$SECONDS
for order in "main-job tests" "tests main-job"; do
    clone="$work/${order// /-then-}"
    git clone -q "$repo" "$clone"
    for round in 1 2; do
        for step in $order; do
            if [ "$step" = main-job ]; then command="$main_job"; else command="$tests"; fi
            echo "== $order, round $round: $command"
            if ! (cd "$clone" && bash -c "$command") >"$work/log" 2>&1; then
                tail -n 30 "$work/log"
                echo "error: the README's $step command failed ($order, round $round)" >&2
                exit 1
            fi
            tail -n 2 "$work/log"
        done
    done
done
echo "README's two commands: both orders, each twice, all passed in $((SECONDS - started)) s"
