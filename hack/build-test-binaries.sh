#!/usr/bin/env bash
# Build the real Kubernetes parts kubescribe's tests run against, from Go modules:
# etcd, the Kubernetes control plane and node (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy), CoreDNS, helm, prometheus and promtool, kwok
# (simulated nodes for the scale tests and benchmark), the Prometheus Operator, the
# Kueue manager with its CRDs and webhook manifests, and versitygw (an S3 server on a
# local directory, for the object store tests), the chart linters kube-score and
# kube-linter, and kube-router (its firewall enforces NetworkPolicies on the real node).
#
# There is no Docker engine and no download site on the build machines, but the Go
# module proxy is reachable, so each tool is compiled from its published module into
# a cache directory outside the repository, keyed by tool and version:
#
#   ${KUBESCRIBE_TOOLS_DIR:-$HOME/.cache/kubescribe/tools}/<tool>-<version>/bin/
#
# Tools built against the same Kubernetes minor share one build (kube-*, Helm and CoreDNS;
# Prometheus, Kueue and kube-linter), so their common packages compile once.
# A tool whose binaries are already there is not rebuilt, so this is a no-op on a warm
# machine. `make test-binaries` and the test command call it; tests find the binaries via
# `hack/build-test-binaries.sh --print-path`.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.19.5}"
PROMETHEUS_MODULE_VERSION="${PROMETHEUS_MODULE_VERSION:-v0.313.5}"   # Prometheus 3.x
COREDNS_VERSION="${COREDNS_VERSION:-v1.12.4}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
# Kueue 0.17 serves kueue.x-k8s.io/v1beta2 and is built against client-go 0.35, within
# the one-minor skew Kubernetes allows against our 1.34 control plane.
KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
# versitygw's posix backend serves the S3 API from a plain directory: a real S3 server.
VERSITYGW_VERSION="${VERSITYGW_VERSION:-v1.8.0}"
# Third-party chart linters, for the test that keeps the chart README's table of their
# findings true (tests/test_chart_linters.py).
KUBE_SCORE_VERSION="${KUBE_SCORE_VERSION:-v1.20.0}"
KUBE_LINTER_VERSION="${KUBE_LINTER_VERSION:-v0.8.3}"
# The real node's NetworkPolicy enforcer: kube-router's firewall alone (iptables and
# ipsets, as k3s embeds it); its router and service proxy are never run. The nftables
# enforcer kind ships (kube-network-policies) needs the kernel's nft queue, which the
# test VMs lack.
KUBE_ROUTER_VERSION="${KUBE_ROUTER_VERSION:-v2.1.0}"
TOOLS_DIR="${KUBESCRIBE_TOOLS_DIR:-$HOME/.cache/kubescribe/tools}"
KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

# No DWARF from the compiler: the binaries are stripped (-s -w) anyway, so it was work thrown
# away at link time.
export CGO_ENABLED=0 GOFLAGS="-mod=mod -gcflags=all=-dwarf=false" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
# The compiler and linker collect garbage less often: a cold kube-score build took 62 s
# instead of 75 s (user CPU 99 s instead of 123 s) for 1.7x the peak RSS (600 MiB), on 2 cores.
export GOGC="${GOGC:-400}"

log() { printf '[build-test-binaries] %s\n' "$*" >&2; }

have() {  # have DIR BIN... : all binaries present and executable
  local dir=$1; shift
  for b in "$@"; do [[ -x "$dir/bin/$b" ]] || return 1; done
}

tools_module() {  # tools_module DIR MODULE_NAME: fresh scratch module
  rm -rf "$1" && mkdir -p "$1" && (cd "$1" && go mod init "$2" >/dev/null 2>&1)
}

build_etcd() {
  local out="$TOOLS_DIR/etcd-$ETCD_VERSION"
  have "$out" etcd && { log "etcd $ETCD_VERSION cached"; return; }
  log "building etcd $ETCD_VERSION"
  local w; w=$(mktemp -d); tools_module "$w" kubescribe.local/etcdtool
  # go.etcd.io/etcd/server/v3 carries replace lines, so `go install pkg@v` refuses it;
  # a tools module that calls etcdmain resolves the published siblings instead.
  mkdir -p "$w/cmd/etcd"
  cat >"$w/cmd/etcd/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$w" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" && go mod tidy \
     && go build -trimpath -o "$out/bin/etcd" ./cmd/etcd)
  rm -rf "$w"
}

module_path() {  # module_path Dir|GoMod MODULE@VERSION: its source or go.mod in the module cache
  go mod download -json "$2" | python3 -I -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

adopt_directives() {  # adopt_directives GOMOD: copy its exclude and non-local replace lines here
  # A dependency's exclude/replace lines do not count outside its own module; those that
  # pin something it needs are copied into the tools module.
  python3 -I - "$1" <<'PY'
import re, subprocess, sys
text = open(sys.argv[1]).read()
def entries(kind):
    out = []
    for block in re.findall(rf'^{kind}\s*\((.*?)^\)', text, re.S | re.M):
        out += [l.split('//')[0].strip() for l in block.splitlines()]
    out += [m.split('//')[0].strip() for m in re.findall(rf'^{kind}\s+([^(].*)$', text, re.M)]
    return [e for e in out if e]
for e in entries('exclude'):
    mod, ver = e.split()
    subprocess.check_call(['go', 'mod', 'edit', f'-exclude={mod}@{ver}'])
for e in entries('replace'):
    left, right = [s.strip() for s in e.split('=>')]
    if right.startswith('.') or right.startswith('/'):
        continue
    l = left.replace(' ', '@'); r = right.replace(' ', '@')
    subprocess.check_call(['go', 'mod', 'edit', f'-replace={l}={r}'])
PY
}

tools_go() {  # tools_go IMPORT...: a tools.go that keeps these packages in the module
  { printf '//go:build tools\n\npackage tools\n\nimport (\n'
    printf '\t_ "%s"\n' "$@"
    printf ')\n'; } > tools.go
}

install_bins() {  # install_bins FROM TO BIN...
  local from=$1 to=$2; shift 2
  mkdir -p "$to/bin"
  local b; for b in "$@"; do mv -f "$from/$b" "$to/bin/$b"; done
}

# Tools built on the same Kubernetes minor share one tools module and one `go build`, so
# the packages they have in common (k8s.io/api, apimachinery, client-go, gRPC, the
# Prometheus client, ...) compile once instead of once per tool: by source size the
# Kubernetes 1.34 group compiles 89 MB instead of 136, the 1.35 group 91 MB instead of
# 131. The module takes the highest version any of them asks for of each dependency
# (Go's minimal version selection), patch and minor releases within one Kubernetes minor.

build_k8s_1_34() {  # the Kubernetes control plane and node, Helm, CoreDNS
  local kube="$TOOLS_DIR/kubernetes-$K8S_VERSION" helm="$TOOLS_DIR/helm-$HELM_VERSION"
  local coredns="$TOOLS_DIR/coredns-$COREDNS_VERSION"
  have "$kube" "${KUBE_CMDS[@]}" && have "$helm" helm && have "$coredns" coredns \
    && { log "kubernetes $K8S_VERSION, helm $HELM_VERSION, coredns $COREDNS_VERSION cached"; return; }
  log "building ${KUBE_CMDS[*]} $K8S_VERSION, helm $HELM_VERSION and coredns $COREDNS_VERSION in one module"
  local w; w=$(mktemp -d); tools_module "$w" kubescribe.local/k8s134tools
  local staging="v0.${K8S_VERSION#v1.}"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
  # local paths; point each one at the published release instead. The list comes from
  # the module's own go.mod so a version bump needs no edit here.
  local gomod; gomod=$(cd "$w" && module_path GoMod "k8s.io/kubernetes@$K8S_VERSION")
  local mods; mods=$(grep -E '^\s*k8s\.io/[a-z0-9./-]+ v0\.0\.0\s*$' "$gomod" | awk '{print $1}' | sort -u)
  (
    cd "$w"
    for m in $mods; do go mod edit -replace "$m=$m@$staging"; done
    go mod edit -require "k8s.io/kubernetes@$K8S_VERSION" -require "helm.sh/helm/v3@$HELM_VERSION" \
      -require "github.com/coredns/coredns@$COREDNS_VERSION"
    # CoreDNS's own main imports every plugin, the cloud DNS providers' SDKs among them; a
    # main with only the plugins a cluster DNS uses (CoreDNS's compile-time plugin
    # selection) compiles in a fraction of the time. harness/envtest/realnode.py's
    # Corefile uses bind, errors, health, ready, kubernetes and cache.
    mkdir -p cmd/coredns
    cat > cmd/coredns/main.go <<'GO'
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() { coremain.Run() }
GO
    tools_go "${KUBE_CMDS[@]/#/k8s.io/kubernetes/cmd/}" helm.sh/helm/v3/cmd/helm
    go mod tidy
    local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
    local ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
      ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    ld+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
    ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
    go build -trimpath -ldflags "$ld" -o "$w/out/" "${KUBE_CMDS[@]/#/k8s.io/kubernetes/cmd/}" \
      helm.sh/helm/v3/cmd/helm ./cmd/coredns
    install_bins "$w/out" "$kube" "${KUBE_CMDS[@]}"
    install_bins "$w/out" "$helm" helm
    install_bins "$w/out" "$coredns" coredns
  )
  rm -rf "$w"
}

build_k8s_1_35() {  # Prometheus and promtool, the Kueue manager, kube-linter
  local prom="$TOOLS_DIR/prometheus-$PROMETHEUS_MODULE_VERSION" kueue="$TOOLS_DIR/kueue-$KUEUE_VERSION"
  local linter="$TOOLS_DIR/kube-linter-$KUBE_LINTER_VERSION"
  have "$prom" prometheus promtool && have "$kueue" kueue && [[ -d "$kueue/config/crd" ]] \
    && have "$linter" kube-linter \
    && { log "prometheus $PROMETHEUS_MODULE_VERSION, kueue $KUEUE_VERSION, kube-linter $KUBE_LINTER_VERSION cached"; return; }
  log "building prometheus and promtool (module $PROMETHEUS_MODULE_VERSION), kueue $KUEUE_VERSION and kube-linter $KUBE_LINTER_VERSION in one module"
  local w; w=$(mktemp -d); tools_module "$w" kubescribe.local/k8s135tools
  # kube-linter declares the vanity path golang.stackrox.io/kube-linter, which the module
  # proxy refuses; the same release is published under its GitHub path, so require the
  # vanity path and replace it with the GitHub module of the same version.
  local lm=golang.stackrox.io/kube-linter
  (
    cd "$w"
    go mod edit -require "github.com/prometheus/prometheus@$PROMETHEUS_MODULE_VERSION" \
      -require "sigs.k8s.io/kueue@$KUEUE_VERSION" \
      -require "$lm@$KUBE_LINTER_VERSION" -replace "$lm=github.com/stackrox/kube-linter@$KUBE_LINTER_VERSION"
    # Prometheus pins some dependencies with exclude/replace lines.
    adopt_directives "$(module_path GoMod "github.com/prometheus/prometheus@$PROMETHEUS_MODULE_VERSION")"
    tools_go github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool \
      sigs.k8s.io/kueue/cmd/kueue "$lm/cmd/kube-linter"
    go mod tidy
    # Module v0.MNN.P is Prometheus M.NN.P (v0.313.5 is 3.13.5).
    local ver=${PROMETHEUS_MODULE_VERSION#v0.}; local mn=${ver%%.*}
    local ld="-s -w -X github.com/prometheus/common/version.Version=$((10#$mn / 100)).$((10#$mn % 100)).${ver#*.}"
    ld+=" -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
    ld+=" -X $lm/internal/version.version=${KUBE_LINTER_VERSION#v}"
    # Prometheus with only the service discoveries the tests use (static and file are
    # always in, plus Kubernetes for the Prometheus Operator's configurations): the cloud
    # providers' SDKs were most of its compile time. The tags touch only Prometheus.
    go build -trimpath -tags remove_all_sd,enable_kubernetes_sd -ldflags "$ld" -o "$w/out/" \
      github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool \
      sigs.k8s.io/kueue/cmd/kueue "$lm/cmd/kube-linter"
    install_bins "$w/out" "$prom" prometheus promtool
    install_bins "$w/out" "$kueue" kueue
    install_bins "$w/out" "$linter" kube-linter
    # Kueue's CRDs and webhook manifests of the same release, copied out of the module
    # source so the tests need neither the module cache nor kustomize
    # (harness/envtest/kueue.py rewrites the webhooks to the local manager's URL).
    local src; src=$(module_path Dir "sigs.k8s.io/kueue@$KUEUE_VERSION")
    rm -rf "$kueue/config" && mkdir -p "$kueue/config/crd"
    cp "$src"/config/components/crd/bases/*.yaml "$kueue/config/crd/"
    cp "$src/config/components/webhook/manifests.yaml" "$kueue/config/webhooks.yaml"
    chmod -R u+w "$kueue/config"
  )
  rm -rf "$w"
}

build_kwok() {
  local out="$TOOLS_DIR/kwok-$KWOK_VERSION"
  have "$out" kwok && { log "kwok $KWOK_VERSION cached"; return; }
  log "building kwok $KWOK_VERSION"
  # kwok's go.mod has no replace lines, so `go install pkg@version` builds it as published.
  GOBIN="$out/bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

build_prometheus_operator() {
  local out="$TOOLS_DIR/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
  have "$out" operator prometheus-config-reloader && [[ -d "$out/crds" ]] \
    && { log "prometheus-operator $PROMETHEUS_OPERATOR_VERSION cached"; return; }
  log "building prometheus-operator and prometheus-config-reloader $PROMETHEUS_OPERATOR_VERSION"
  local w; w=$(mktemp -d); tools_module "$w" kubescribe.local/promoperator
  local m=github.com/prometheus-operator/prometheus-operator
  (
    cd "$w"
    # The main module replaces its two API submodules with local paths, which only
    # count inside its own tree; require their published releases of the same version.
    go mod edit -require "$m@$PROMETHEUS_OPERATOR_VERSION" \
      -require "$m/pkg/apis/monitoring@$PROMETHEUS_OPERATOR_VERSION" \
      -require "$m/pkg/client@$PROMETHEUS_OPERATOR_VERSION"
    tools_go "$m/cmd/operator" "$m/cmd/prometheus-config-reloader"
    go mod tidy
    local ld="-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_OPERATOR_VERSION#v}"
    go build -trimpath -ldflags "$ld" -o "$out/bin/" "$m/cmd/operator" "$m/cmd/prometheus-config-reloader"
    # The CRDs (ServiceMonitor, PodMonitor, PrometheusRule, Prometheus, ...) of the same
    # release, from the module source, for the test cluster.
    local src; src=$(module_path Dir "$m@$PROMETHEUS_OPERATOR_VERSION")
    rm -rf "$out/crds" && mkdir -p "$out/crds" && cp "$src"/example/prometheus-operator-crd/*.yaml "$out/crds/"
  )
  rm -rf "$w"
}

build_versitygw() {
  local out="$TOOLS_DIR/versitygw-$VERSITYGW_VERSION"
  have "$out" versitygw && { log "versitygw $VERSITYGW_VERSION cached"; return; }
  log "building versitygw $VERSITYGW_VERSION"
  # versitygw's go.mod has no replace lines, so `go install pkg@version` builds it as
  # published. main.Version is what its release builds set (without the "v").
  GOBIN="$out/bin" go install -trimpath -ldflags "-s -w -X main.Version=${VERSITYGW_VERSION#v}" \
    "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
}

build_kube_score() {
  local out="$TOOLS_DIR/kube-score-$KUBE_SCORE_VERSION"
  have "$out" kube-score && { log "kube-score $KUBE_SCORE_VERSION cached"; return; }
  log "building kube-score $KUBE_SCORE_VERSION"
  # kube-score's go.mod has no replace lines, so `go install pkg@version` builds it as
  # published; main.version is what its release builds set.
  GOBIN="$out/bin" go install -trimpath -ldflags "-s -w -X main.version=${KUBE_SCORE_VERSION#v}" \
    "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION"
}

build_kube_router() {
  local out="$TOOLS_DIR/kube-router-$KUBE_ROUTER_VERSION"
  have "$out" kube-router && { log "kube-router $KUBE_ROUTER_VERSION cached"; return; }
  log "building kube-router $KUBE_ROUTER_VERSION"
  # kube-router's go.mod has no replace lines, so `go install pkg@version` builds it as
  # published; pkg/version.Version is what its release builds set.
  GOBIN="$out/bin" go install -trimpath -ldflags "-s -w \
    -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
}

print_bindirs() {
  printf '%s\n' "$TOOLS_DIR/etcd-$ETCD_VERSION/bin" "$TOOLS_DIR/kubernetes-$K8S_VERSION/bin" \
    "$TOOLS_DIR/helm-$HELM_VERSION/bin" "$TOOLS_DIR/prometheus-$PROMETHEUS_MODULE_VERSION/bin" \
    "$TOOLS_DIR/coredns-$COREDNS_VERSION/bin" "$TOOLS_DIR/kwok-$KWOK_VERSION/bin" \
    "$TOOLS_DIR/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION/bin" "$TOOLS_DIR/kueue-$KUEUE_VERSION/bin" \
    "$TOOLS_DIR/versitygw-$VERSITYGW_VERSION/bin" "$TOOLS_DIR/kube-score-$KUBE_SCORE_VERSION/bin" \
    "$TOOLS_DIR/kube-linter-$KUBE_LINTER_VERSION/bin" \
    "$TOOLS_DIR/kube-router-$KUBE_ROUTER_VERSION/bin" | paste -sd:
}

timed() {  # timed TOOL: build_TOOL, then say how long it took
  local t0=$SECONDS
  "build_$1"
  log "$1 ready after $((SECONDS - t0)) s"
}

lane() { local t; for t in "$@"; do timed "$t"; done; }

build_all() {
  # Two lanes at once. A build spends minutes on one core (downloading modules from the
  # proxy, linking), and the other lane's compiler fills the idle one; the shared
  # GOCACHE and GOMODCACHE are safe for concurrent go commands. Each lane starts with
  # its longest build.
  local t0=$SECONDS a b rc=0
  lane k8s_1_34 kube_router etcd &
  a=$!
  lane k8s_1_35 prometheus_operator kwok versitygw kube_score &
  b=$!
  wait "$a" || rc=1
  wait "$b" || rc=1
  [[ $rc == 0 ]] || { log "a build failed (its output is above)"; return 1; }
  log "all tools ready after $((SECONDS - t0)) s"
}

case "${1:-all}" in
  --print-path) print_bindirs ;;
  etcd) build_etcd ;;
  kube|helm|coredns) build_k8s_1_34 ;;
  prometheus|kueue|kube-linter) build_k8s_1_35 ;;
  kwok) build_kwok ;;
  prometheus-operator) build_prometheus_operator ;;
  versitygw) build_versitygw ;;
  kube-score) build_kube_score ;;
  kube-router) build_kube_router ;;
  all) build_all; log "PATH entries: $(print_bindirs)" ;;
  *) echo "usage: $0 [all|etcd|kube|helm|coredns|prometheus|kueue|kube-linter|kwok|prometheus-operator|versitygw|kube-score|kube-router|--print-path]" >&2
     echo "  (kube, helm and coredns build together, as do prometheus, kueue and kube-linter)" >&2; exit 2 ;;
esac
