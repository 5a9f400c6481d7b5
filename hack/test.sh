#!/usr/bin/env bash
# The whole test suite from a fresh machine: Debian packages, the project venv, the base
# model (hack/setup.sh models), the Go test tools and the images (all cached after the
# first run), then pytest in the venv.
# The Go tools' build (compiling, CPU-bound) runs while pip and the image build (mostly
# downloads and disk) run, and each phase prints when it ended.
set -euo pipefail
cd "$(dirname "$0")/.."
phase() { printf '[test] %s at %dm%02ds\n' "$1" $((SECONDS / 60)) $((SECONDS % 60)) >&2; }

hack/setup.sh debs
phase "Debian packages ready"
golog=$(mktemp)
hack/build-test-binaries.sh all >"$golog" 2>&1 &
gopid=$!
trap 'kill "$gopid" 2>/dev/null || true; rm -f "$golog"' EXIT
PY=$(hack/setup.sh venv)
phase "venv ready ($PY)"
hack/setup.sh models
phase "models ready"
hack/build-images.sh all
phase "images ready"
if ! wait "$gopid"; then
  cat "$golog" >&2
  echo "[test] building the Go test tools failed (its log is above)" >&2
  exit 1
fi
cat "$golog" >&2
phase "Go test tools ready"
# -P and PYTHONSAFEPATH: neither pytest nor the Python processes the tests start put the
# repository root on sys.path, where operator/ would hide the standard library's.
export PYTHONSAFEPATH=1
# Two workers, a test file each at a time, the real node's files as one unit
# (tests/support/workers.py): the suite waits on servers and pods about half the time, so
# a second worker fills the idle core. KUBESCRIBE_TEST_WORKERS=0 runs it in one process.
"$PY" -P -m pytest -n "${KUBESCRIBE_TEST_WORKERS:-2}" --dist loadfile "$@"
