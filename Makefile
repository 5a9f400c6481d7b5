# kubescribe: the two quick-start targets are `make demo` and `make test`.
# Both run in the project virtualenv .venv, made from $(PY) (python3 unless PY or PYTHON
# says otherwise); nothing is installed into the system interpreter.
PY ?= $(or $(PYTHON),python3)
export PY
# Never the repository root on sys.path: operator/ would hide the standard library's.
export PYTHONSAFEPATH = 1

.PHONY: demo test setup venv test-binaries images bench crds lint

demo: ## make .venv with the runner's packages only, then transcribe the bundled sample (no cluster, no Redis)
	@py=$$(hack/venv.sh runner) && "$$py" -P -m kubescribe.cli transcribe --sample --format srt

test: ## install everything (Debian packages, .venv, Go-built Kubernetes binaries, images) and run all tests
	hack/test.sh

setup: ## Debian packages and .venv with every extra
	hack/setup.sh

venv: ## .venv with every extra, no Debian packages
	hack/venv.sh all

test-binaries: ## build etcd, kube-apiserver, kube-controller-manager, helm, prometheus (cached)
	hack/build-test-binaries.sh all

images: ## build the operator, runner, redis and pause images with buildah, no registry (cached OCI archives)
	hack/build-images.sh all

bench: setup test-binaries ## run the benchmarks and write BENCHMARKS.md
	.venv/bin/python -P -m benchmarks.run --output BENCHMARKS.md

crds: venv ## regenerate the CRD from kubescribe/models.py into crds/ and the chart
	.venv/bin/python -P -m kubescribe.crd_write

lint: venv ## architecture (import-linter), docs and CRD drift checks only
	.venv/bin/python -P -m pytest -q tests/test_architecture.py tests/test_docs.py tests/test_crd.py
