#!/usr/bin/env bash
# The whole test suite from a fresh machine: install, build the Kubernetes test
# binaries and the images (both cached after the first run), run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup.sh
hack/build-test-binaries.sh all
hack/build-images.sh all
PY="${PYTHON:-python3}"
"$PY" -m pytest "$@"
