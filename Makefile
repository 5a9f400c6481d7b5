# kubescribe: the two quick-start targets are `make demo` and `make test`.
PY ?= python3

.PHONY: demo test setup test-binaries images bench crds lint

demo: setup ## install, then transcribe the bundled sample locally (no cluster, no Redis)
	$(PY) -m kubescribe.cli transcribe --sample --format srt

test: ## install everything (Debian and Python packages, Go-built Kubernetes binaries) and run all tests
	hack/test.sh

setup:
	hack/setup.sh

test-binaries: ## build etcd, kube-apiserver, kube-controller-manager, helm, prometheus (cached)
	hack/build-test-binaries.sh all

images: ## build the operator, runner, redis and pause images with buildah, no registry (cached OCI archives)
	hack/build-images.sh all

bench: setup test-binaries ## run the benchmarks and write BENCHMARKS.md
	$(PY) -m benchmarks.run --output BENCHMARKS.md

crds: ## regenerate the CRD from kubescribe/models.py into crds/ and the chart
	$(PY) -m kubescribe.crd_write

lint: ## architecture (import-linter), docs and CRD drift checks only
	$(PY) -m pytest -q tests/test_architecture.py tests/test_docs.py tests/test_crd.py
