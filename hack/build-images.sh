#!/usr/bin/env bash
# Build kubescribe's container images from the repository's own Dockerfiles with buildah,
# on a machine with no Docker engine and no container registry: only the Debian mirror
# (apt), PyPI (pip) and the Go module proxy are reachable. Every tool uses the machine's
# configured defaults; no mirror or index address is written here.
#
#   hack/build-images.sh [all|base|operator|runner|redis|pause ...]  build (cached)
#   hack/build-images.sh verify             run each built image's smoke checks
#   hack/build-images.sh --dry-run [IMAGE]  refs, archives, cached or not; builds nothing
#   hack/build-images.sh --print-manifest   path of manifest.json
#
# The images (repository localhost/kubescribe/...):
#   base      python-base:3.11-bookworm[-<hash>]  Debian bookworm minbase + Python 3.11, made
#             with mmdebstrap: the stand-in for python:3.11-slim-bookworm and nvidia/cuda
#   operator  kubescribe-operator:<version>-<hash>  Dockerfile.operator on base
#   runner    kubescribe-runner:<version>-<hash>    Dockerfile.runner on base, CPU only
#             (RUNNER_EXTRAS=runner: no torch, no CUDA; KUBESCRIBE_RUNNER_EXTRAS overrides)
#   redis     redis:7-<hash>                        hack/images/redis.Dockerfile on base: Debian's
#             redis-server standing in for the chart's redis.internal.image
#   pause     pause:<TAG of kubernetes' build/pause/Makefile>  kubernetes' pause.c, static
#
# <hash> is the first 12 hex digits of a sha256 over all of an image's inputs (its
# Dockerfile, the files its COPY lines take in after .dockerignore, build args, the base's
# hash), so a changed image gets a new tag (pause keeps kubernetes' version: it changes
# only with K8S_VERSION). Cache layout, outside the repository:
#
#   ${KUBESCRIBE_IMAGES_DIR:-$HOME/.cache/kubescribe/images}/
#     <name>-<full hash>.tar   OCI archive whose index names the full reference (ref.name),
#                              so `ctr -n k8s.io images import FILE` imports it as that ref
#     manifest.json            {"<name>": {"ref": ..., "archive": ..., "hash": ...}, ...}
#     buildah/                 buildah storage (--root/--runroot); tmp/ is TMPDIR
#     logs/<name>.log          the last build's log of each image
#
# An image whose archive exists is not rebuilt; delete the archive to force it. Python
# packages are not pinned in the Dockerfiles, so a rebuild may pick up newer releases.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
K8S_VERSION="${K8S_VERSION:-v1.34.4}"
RUNNER_EXTRAS="${KUBESCRIBE_RUNNER_EXTRAS:-runner}"
NS=localhost/kubescribe
IMAGES=(base operator runner redis pause)
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
BASE_TAG=3.11-bookworm

die() { printf 'build-images: %s\n' "$*" >&2; exit 1; }
log() { printf '[build-images] %s\n' "$*" >&2; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

CACHE="${KUBESCRIBE_IMAGES_DIR:-$HOME/.cache/kubescribe/images}"
mkdir -p "$CACHE" || die "cannot create the cache directory $CACHE"
CACHE=$(cd "$CACHE" && pwd)
LOGS=$CACHE/logs WORK=$CACHE/work MANIFEST=$CACHE/manifest.json
BUILDAH=(buildah --root "$CACHE/buildah/root" --runroot "$CACHE/buildah/runroot" --storage-driver overlay)
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)
[[ -n $VERSION ]] || die "no version in $ROOT/pyproject.toml"

need() {  # need CMD DEBIAN_PACKAGE
  command -v "$1" >/dev/null 2>&1 || die "missing $1 (Debian package $2): run hack/setup.sh"
}

now() { printf '%s' "$EPOCHREALTIME"; }
secs() { python3 -I -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}s")' "$1" "$(now)"; }

step() {  # step IMAGE WHAT CMD...: append CMD's output to the image's log; on failure, say where
  local img=$1 what=$2; shift 2
  local lf=$LOGS/$img.log t0; t0=$(now)
  printf '\n### %s %s: %s\n' "$(date -u +%FT%TZ)" "$what" "$*" >>"$lf"
  "$@" >>"$lf" 2>&1 || {
    local rc=$?
    tail -n 15 "$lf" | sed 's/^/    /' >&2
    die "$img: step '$what' failed (exit $rc); log: $lf"
  }
  log "$img: $what $(secs "$t0")"
}

sha() { sha256sum | cut -c1-64; }

# --- inputs and hashes ------------------------------------------------------------------

# stage_context DOCKERFILE CONTEXT DOCKERIGNORE DEST: copy the files the Dockerfile's COPY
# and ADD lines take from CONTEXT, minus what DOCKERIGNORE ("" for none) leaves out, into
# DEST; print a sha256 over their paths, exec bits and contents. Buildah builds from DEST,
# so what is hashed is exactly what goes into the image.
stage_context() {
  python3 -I - "$@" <<'PY'
import hashlib, json, os, re, shutil, sys
from pathlib import Path

dockerfile, ctx, ignore_file, dest = sys.argv[1:5]
ctx, dest = Path(ctx), Path(dest)

def pattern(p):
    out, i = "", 0
    while i < len(p):
        c = p[i]
        if p.startswith("**/", i):
            out += "(?:.*/)?"; i += 3; continue
        if p.startswith("**", i):
            out += ".*"; i += 2; continue
        if c == "*": out += "[^/]*"
        elif c == "?": out += "[^/]"
        elif c == "[":
            j = p.find("]", i)
            if j < 0: out += re.escape(c)
            else: out += "[" + p[i + 1:j].replace("!", "^", 1) + "]"; i = j
        elif c == "\\" and i + 1 < len(p): out += re.escape(p[i + 1]); i += 1
        else: out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")

rules = []  # (excluded?, regex), last match wins, as in .dockerignore
if ignore_file:
    for line in Path(ignore_file).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        line = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((not keep, pattern(line)))

def ignored(rel):
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for excluded, rx in rules:
        if any(rx.match(p) for p in prefixes):
            verdict = excluded
    return verdict

text = Path(dockerfile).read_text()
lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
sources = []
for ln in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():
    words = ln.split()
    if not words or words[0].upper() not in ("COPY", "ADD"):
        continue
    args = words[1:]
    if any(a.startswith("--from") for a in args):
        continue
    args = [a for a in args if not a.startswith("--")]
    if args and args[0].startswith("["):
        args = json.loads(" ".join(args))
    sources += args[:-1]

files = set()
for src in sources:
    top = ctx / src.lstrip("/")
    if not top.exists() and not top.is_symlink():
        sys.exit(f"{dockerfile}: COPY source {src} not found in {ctx}")
    for path in ([top] if not top.is_dir() or top.is_symlink() else
                 [Path(d) / f for d, _, fs in os.walk(top) for f in fs]):
        rel = path.relative_to(ctx).as_posix()
        if not ignored(rel):
            files.add(rel)

h = hashlib.sha256()
for rel in sorted(files):
    src, dst = ctx / rel, dest / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        target = os.readlink(src)
        os.symlink(target, dst)
        h.update(f"L {rel} {target}\n".encode())
    else:
        data = src.read_bytes()
        shutil.copy2(src, dst)
        mode = "x" if os.access(src, os.X_OK) else "-"
        h.update(f"F {rel} {mode} {hashlib.sha256(data).hexdigest()}\n".encode())
print(h.hexdigest())
PY
}

declare -A REF ARCHIVE HASH NOTE

# The base: mmdebstrap with the machine's apt sources. Options of the machine's apt that
# apt inside the images needs as well (a snapshot mirror's expired Release files) go into
# the rootfs with --aptopt; documentation is left out with dpkg path-excludes, which
# stay in the image for later apt-get installs too.
base_mmdebstrap_args() {
  local a=(--variant=minbase "--include=$BASE_PACKAGES" '--aptopt=Acquire::Languages "none"')
  local key val
  for key in Acquire::Check-Valid-Until Acquire::Check-Date; do
    val=""
    eval "$(apt-config shell val "$key" 2>/dev/null)" || true
    [[ -n $val ]] && a+=("--aptopt=$key \"$val\"")
  done
  a+=('--dpkgopt=path-exclude=/usr/share/man/*' '--dpkgopt=path-exclude=/usr/share/doc/*'
      '--dpkgopt=path-include=/usr/share/doc/*/copyright' '--dpkgopt=path-exclude=/usr/share/locale/*'
      '--dpkgopt=path-exclude=/usr/share/info/*'
      # mmdebstrap's own cleanup leaves apt's caches alone once docker-clean says there are none
      '--customize-hook=rm -f "$1/var/cache/apt/pkgcache.bin" "$1/var/cache/apt/srcpkgcache.bin"')
  printf '%s\n' "${a[@]}"
}

# What the official Debian and Ubuntu images carry in /etc/apt/apt.conf.d/docker-clean: no
# package caches left behind by apt-get in RUN steps (about 70 MB of *.bin otherwise).
# A customize hook adds it after the bootstrap: as an --aptopt, apt would run the hook's
# rm outside the chroot during mmdebstrap.
APT_DOCKER_CLEAN='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";'
BASE_CONFIG=(--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8
             --cmd python3 --label org.opencontainers.image.title=kubescribe-python-base)

plan_base() {
  local h
  h=$( { echo "base recipe 1"; echo "suite $SUITE"; dpkg --print-architecture 2>/dev/null || uname -m
         base_mmdebstrap_args; printf '%s\n' "$APT_DOCKER_CLEAN" "${BASE_CONFIG[@]}"; } | sha)
  HASH[base]=$h REF[base]=$NS/python-base:$BASE_TAG-${h:0:12} ARCHIVE[base]=$CACHE/base-$h.tar
}

# plan_dockerfile NAME REPO TAG_PREFIX DOCKERFILE CONTEXT DOCKERIGNORE BUILD_ARG...
declare -A DF CTX BUILD_ARGS
plan_dockerfile() {
  local name=$1 repo=$2 prefix=$3 dockerfile=$4 ctx=$5 ignore=$6; shift 6
  local w=$WORK/$name tree h
  rm -rf "$w" && mkdir -p "$w/ctx" && cp "$dockerfile" "$w/Dockerfile"
  tree=$(stage_context "$w/Dockerfile" "$ctx" "$ignore" "$w/ctx") \
    || die "$name: cannot stage the build context of $dockerfile"
  local content_args=("$@")
  local v; for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
    [[ -n ${!v:-} ]] && content_args+=("$v=${!v}")
  done
  h=$( { echo "image $name"; echo "dockerfile $(sha <"$w/Dockerfile")"; echo "context $tree"
         echo "base ${HASH[base]}"; printf 'arg %s\n' "${content_args[@]}" | LC_ALL=C sort; } | sha)
  HASH[$name]=$h REF[$name]=$NS/$repo:$prefix-${h:0:12} ARCHIVE[$name]=$CACHE/$name-$h.tar
  DF[$name]=$w/Dockerfile CTX[$name]=$w/ctx BUILD_ARGS[$name]="$*"
}

# pause.c and the pause version come from the k8s.io/kubernetes module; with
# DOWNLOAD=0 only the local module cache is looked at (no network).
PAUSE_DIR="" PAUSE_TAG=""
pause_source() {
  local download=$1 dir
  command -v go >/dev/null 2>&1 || return 1
  local env=(GOFLAGS=-mod=mod); [[ $download == 1 ]] || env+=(GOPROXY=off)
  dir=$(cd "${TMPDIR:-/tmp}" && env "${env[@]}" go mod download -json "k8s.io/kubernetes@$K8S_VERSION" 2>/dev/null \
        | python3 -I -c 'import json,sys; print(json.load(sys.stdin).get("Dir") or "")' 2>/dev/null) || return 1
  [[ -n $dir && -f $dir/build/pause/linux/pause.c ]] || return 1
  PAUSE_DIR=$dir/build/pause
  PAUSE_TAG=$(sed -n 's/^TAG ?= *//p' "$PAUSE_DIR/Makefile" | head -1)
  [[ -n $PAUSE_TAG ]]
}
PAUSE_CONFIG=(--config.entrypoint /pause --config.user 65535:65535)
plan_pause() {
  if ! pause_source "$1"; then
    NOTE[pause]="kubernetes $K8S_VERSION module not in the Go module cache (or no go)"
    return
  fi
  local h
  h=$( { echo "pause recipe 1"; echo "kubernetes $K8S_VERSION tag $PAUSE_TAG"
         sha <"$PAUSE_DIR/linux/pause.c"; pause_cflags; gcc --version 2>/dev/null | head -1
         printf '%s\n' "${PAUSE_CONFIG[@]}"; } | sha)
  HASH[pause]=$h REF[pause]=$NS/pause:$PAUSE_TAG ARCHIVE[pause]=$CACHE/pause-$h.tar
}
pause_cflags() { echo "-Os -Wall -Werror -static -DVERSION=v$PAUSE_TAG-kubescribe"; }

plan_all() {  # plan_all DOWNLOAD
  plan_base
  plan_dockerfile operator kubescribe-operator "$VERSION" "$ROOT/Dockerfile.operator" "$ROOT" "$ROOT/.dockerignore" \
    "PYTHON_IMAGE=${REF[base]}"
  plan_dockerfile runner kubescribe-runner "$VERSION" "$ROOT/Dockerfile.runner" "$ROOT" "$ROOT/.dockerignore" \
    "CUDA_IMAGE=${REF[base]}" "RUNNER_EXTRAS=$RUNNER_EXTRAS"
  plan_dockerfile redis redis 7 "$ROOT/hack/images/redis.Dockerfile" "$ROOT/hack/images" "" \
    "BASE_IMAGE=${REF[base]}"
  plan_pause "$1"
}

# --- building ---------------------------------------------------------------------------

have_image() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# Drop other archives and tags of the same image, then dangling layers.
prune_old() {  # prune_old NAME REPO KEEP_REF...
  local name=$1 repo=$2; shift 2
  local f r
  for f in "$CACHE/$name"-*.tar; do
    [[ -e $f && $f != "${ARCHIVE[$name]}" ]] && rm -f "$f"
  done
  while read -r r; do
    [[ -z $r || " $* " == *" $r "* ]] || "${BUILDAH[@]}" rmi "$r" >/dev/null 2>&1 || true
  done < <("${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep "^$NS/$repo:" || true)
  "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
}

push_archive() {  # push_archive NAME: image REF[NAME] -> ARCHIVE[NAME], atomically
  local a=${ARCHIVE[$1]}
  rm -f "$a.partial"
  step "$1" "push oci-archive" "${BUILDAH[@]}" push --quiet "${REF[$1]}" "oci-archive:$a.partial:${REF[$1]}"
  mv -f "$a.partial" "$a"
}

start() {  # start NAME: fresh log, one line
  : >"$LOGS/$1.log"
  log "$1: building ${REF[$1]}"
}

done_msg() {
  log "$1: built in $(secs "$2"), archive $(du -h "${ARCHIVE[$1]}" | cut -f1) ${ARCHIVE[$1]}"
}

mmdebstrap_base() {  # mmdebstrap_base OUT.tar
  local args clean=${1%/*}/docker-clean
  mapfile -t args < <(base_mmdebstrap_args)
  printf '%s\n' "$APT_DOCKER_CLEAN" >"$clean" \
    && mmdebstrap "--customize-hook=upload $clean /etc/apt/apt.conf.d/docker-clean" "${args[@]}" "$SUITE" "$1"
}

import_base() {  # import_base ROOTFS_TAR
  local c
  c=$("${BUILDAH[@]}" from scratch) || return 1
  "${BUILDAH[@]}" add "$c" "$1" / \
    && "${BUILDAH[@]}" config "${BASE_CONFIG[@]}" "$c" \
    && "${BUILDAH[@]}" commit --rm "$c" "${REF[base]}" \
    && "${BUILDAH[@]}" tag "${REF[base]}" "$NS/python-base:$BASE_TAG" \
    || { "${BUILDAH[@]}" rm "$c" >/dev/null 2>&1; return 1; }
}

# name_only ID REF: REF on image ID, and no other name the pull may have given it.
name_only() {
  local n
  "${BUILDAH[@]}" tag "$1" "$2" || return 1
  for n in $("${BUILDAH[@]}" images --no-trunc --format '{{.ID}} {{.Name}}:{{.Tag}}' \
             | awk -v id="$1" '$1 == id || $1 == "sha256:" id {print $2}'); do
    [[ $n == "$2" || $n == "<none>:<none>" ]] || "${BUILDAH[@]}" rmi "$n" >/dev/null || return 1
  done
}

load_archive() {  # load_archive NAME: put an archived image back into buildah storage
  local id
  id=$("${BUILDAH[@]}" pull --quiet "oci-archive:${ARCHIVE[$1]}") && name_only "$id" "${REF[$1]}"
}

ensure_base() {  # the base in buildah storage (from its archive, or built)
  have_image "${REF[base]}" && return
  if [[ -f ${ARCHIVE[base]} ]]; then
    step base "load cached archive into buildah storage" load_archive base
    "${BUILDAH[@]}" tag "${REF[base]}" "$NS/python-base:$BASE_TAG"
    return
  fi
  build_base
}

build_base() {
  need mmdebstrap mmdebstrap
  local t0; t0=$(now); start base
  local w=$WORK/base; rm -rf "$w"; mkdir -p "$w"
  step base "mmdebstrap $SUITE rootfs" mmdebstrap_base "$w/rootfs.tar"
  step base "import rootfs" import_base "$w/rootfs.tar"
  rm -rf "$w"
  push_archive base
  prune_old base python-base "${REF[base]}" "$NS/python-base:$BASE_TAG"
  done_msg base "$t0"
}

pip_build_args() {  # the machine's pip settings, forwarded only when set
  local v out=()
  for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT; do
    [[ -n ${!v:-} ]] && out+=(--build-arg "$v=${!v}")
  done
  # pip's CA bundle (it may hold CAs the Debian rootfs lacks): mounted read-only for the
  # RUN steps only, never copied into an image.
  local ca=${PIP_CERT:-}
  [[ -n $ca ]] || ca=$(python3 -I -m pip config list 2>/dev/null | sed -n "s/^[a-z:]*\.cert='\(.*\)'\$/\1/p" | tail -1)
  [[ -n $ca ]] || ca=/etc/ssl/certs/ca-certificates.crt
  [[ -f $ca ]] && out+=(--volume "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
  printf '%s\n' "${out[@]}"
}

build_dockerfile() {  # build_dockerfile NAME REPO
  local name=$1 repo=$2 t0 a extra=()
  [[ -f ${ARCHIVE[$name]} ]] && { log "$name: cached ${REF[$name]}"; return; }
  ensure_base
  t0=$(now); start "$name"
  for a in ${BUILD_ARGS[$name]}; do extra+=(--build-arg "$a"); done
  [[ $name == redis ]] || mapfile -t -O "${#extra[@]}" extra < <(pip_build_args)
  step "$name" "buildah bud" "${BUILDAH[@]}" bud --pull=never --isolation=chroot --layers=false --force-rm \
    -f "${DF[$name]}" -t "${REF[$name]}" --label "io.kubescribe.inputs=${HASH[$name]}" \
    "${extra[@]}" "${CTX[$name]}"
  push_archive "$name"
  prune_old "$name" "$repo" "${REF[$name]}"
  done_msg "$name" "$t0"
}

compile_pause() {  # compile_pause WORKDIR
  cp "$PAUSE_DIR/linux/pause.c" "$1/pause.c" && chmod u+w "$1/pause.c" \
    && gcc $(pause_cflags) -o "$1/pause" "$1/pause.c" && strip "$1/pause" \
    && [[ $("$1/pause" -v) == "pause.c v$PAUSE_TAG-kubescribe" ]]
}

pack_pause() {  # pack_pause WORKDIR: a one-file image laid out with umoci, as an OCI archive
  local w=$1
  umoci init --layout "$w/oci" \
    && umoci new --image "$w/oci:$PAUSE_TAG" \
    && umoci unpack --image "$w/oci:$PAUSE_TAG" "$w/bundle" \
    && install -m 755 "$w/pause" "$w/bundle/rootfs/pause" \
    && umoci repack --image "$w/oci:$PAUSE_TAG" "$w/bundle" \
    && umoci config --image "$w/oci:$PAUSE_TAG" "${PAUSE_CONFIG[@]}" \
    && umoci gc --layout "$w/oci" \
    && python3 -I - "$w/oci/index.json" "$PAUSE_TAG" "${REF[pause]}" <<'PY' \
    && tar -C "$w/oci" -cf "$w/pause.tar" .
# The full reference as the index's ref.name, as `buildah push ... oci-archive:` writes
# it: `ctr images import` and `buildah pull` then name the image by it.
import json, sys
path, tag, ref = sys.argv[1:]
index = json.load(open(path))
for m in index["manifests"]:
    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
        m["annotations"]["org.opencontainers.image.ref.name"] = ref
json.dump(index, open(path, "w"))
PY
}

build_pause() {
  command -v go >/dev/null 2>&1 || die "missing go (the Go toolchain the README asks for; it fetches kubernetes' pause.c)"
  need gcc gcc; need strip binutils; need umoci umoci
  [[ -f /usr/lib/$(gcc -print-multiarch)/libc.a ]] || die "missing libc.a (Debian package libc6-dev): run hack/setup.sh"
  [[ -n ${HASH[pause]:-} ]] || {
    step pause "go mod download k8s.io/kubernetes@$K8S_VERSION" pause_source 1
    plan_pause 0
  }
  [[ -n ${HASH[pause]:-} ]] || die "pause: ${NOTE[pause]}"
  [[ -f ${ARCHIVE[pause]} ]] && { log "pause: cached ${REF[pause]}"; return; }
  local t0; t0=$(now); start pause
  local w=$WORK/pause; rm -rf "$w"; mkdir -p "$w"
  step pause "gcc -static pause.c" compile_pause "$w"
  step pause "umoci pack" pack_pause "$w"
  mv -f "$w/pause.tar" "${ARCHIVE[pause]}"
  rm -rf "$w"
  step pause "load into buildah storage" load_archive pause
  prune_old pause pause "${REF[pause]}"
  done_msg pause "$t0"
}

build() {
  case $1 in
    base) [[ -f ${ARCHIVE[base]} ]] && { log "base: cached ${REF[base]}"; return; }; build_base ;;
    operator) build_dockerfile operator kubescribe-operator ;;
    runner) build_dockerfile runner kubescribe-runner ;;
    redis) build_dockerfile redis redis ;;
    pause) build_pause ;;
  esac
}

write_manifest() {
  local n args=()
  for n in "${IMAGES[@]}"; do
    [[ -n ${ARCHIVE[$n]:-} && -f ${ARCHIVE[$n]} ]] && args+=("$n" "${REF[$n]}" "${ARCHIVE[$n]}" "${HASH[$n]}")
  done
  python3 -I - "$MANIFEST" "${args[@]}" <<'PY'
import json, os, sys
out, rest = sys.argv[1], sys.argv[2:]
data = {rest[i]: {"ref": rest[i + 1], "archive": rest[i + 2], "hash": rest[i + 3]}
        for i in range(0, len(rest), 4)}
with open(out + ".tmp", "w") as f:
    json.dump(data, f, indent=2)
    f.write("\n")
os.replace(out + ".tmp", out)
PY
}

# --- verify -----------------------------------------------------------------------------

# run_in REF CMD...: CMD in a fresh working container of REF, as the image's user, with no
# network: chroot isolation cannot make a network namespace itself, so buildah runs in a
# new one that has only a loopback interface.
run_in() {
  local ref=$1 c rc=0; shift
  c=$("${BUILDAH[@]}" from --pull=never --quiet "$ref") || return 1
  unshare --net sh -c 'ip link set lo up && exec "$@"' sh \
    "${BUILDAH[@]}" run --isolation=chroot "$c" -- "$@" || rc=$?
  "${BUILDAH[@]}" rm "$c" >/dev/null 2>&1 || true
  return $rc
}

verify_image() {  # verify_image NAME: the smoke checks of one image, output to stdout
  local n=$1 ref=${REF[$1]}
  have_image "$ref" || load_archive "$n" || return 1
  local nobuild='for t in gcc cc c++ make; do command -v $t && exit 1; done
                 [ ! -e /root/.cache/pip ] && echo "no compiler, no pip cache"'
  case $n in
    base) run_in "$ref" python3 -I -c 'import sys, ssl, venv; print(sys.version)' ;;
    operator)
      # kubescribe-operator takes no options (it ignores --help and starts kopf): run it
      # briefly with no cluster and look for kopf's startup failing on the missing config.
      run_in "$ref" sh -c 'id -u; out=$(timeout -k 5 10 kubescribe-operator --help 2>&1)
                           printf "%s\n" "$out" | grep -m1 "Invalid kube-config file"' \
        && run_in "$ref" sh -c 'kubescribe-gateway --version' \
        && run_in "$ref" sh -c "$nobuild" ;;
    runner)
      run_in "$ref" sh -c "id -u; kubescribe-runner --help | head -5" \
        && run_in "$ref" sh -c "$nobuild" \
        && run_in "$ref" env HF_HUB_OFFLINE=1 python -c \
          "from kubescribe.runner.engine import resolve_model; print('tiny.en ->', resolve_model('tiny.en', '/models'))" \
        && run_in "$ref" env HF_HUB_OFFLINE=1 kubescribe transcribe --sample --format srt ;;
    redis)
      run_in "$ref" redis-server --version \
        && run_in "$ref" setpriv --reuid=999 --regid=999 --clear-groups sh -c '
             cd /data && docker-entrypoint.sh redis-server --requirepass pw --save "" --appendonly no \
               --maxmemory 1gb --maxmemory-policy allkeys-lru --port 16379 --daemonize yes --logfile /data/log
             sleep 1; REDISCLI_AUTH=pw redis-cli -p 16379 ping && REDISCLI_AUTH=pw redis-cli -p 16379 config get protected-mode \
               && REDISCLI_AUTH=pw redis-cli -p 16379 shutdown nosave; id -u' ;;
    pause) run_in "$ref" /pause -v ;;
  esac
}

verify() {
  local n ok=1 t0 lf
  for n in "${IMAGES[@]}"; do
    [[ -n ${ARCHIVE[$n]:-} && -f ${ARCHIVE[$n]} ]] || { log "$n: not built, skipped"; continue; }
    lf=$LOGS/$n.verify.log t0=$(now)
    if verify_image "$n" >"$lf" 2>&1; then
      log "$n: verify ok $(secs "$t0") ($(tr '\n' ' ' <"$lf" | cut -c1-150))"
    else
      ok=0; log "$n: verify FAILED; log: $lf"
    fi
  done
  log "sizes (archive / unpacked in buildah storage):"
  for n in "${IMAGES[@]}"; do
    [[ -n ${ARCHIVE[$n]:-} && -f ${ARCHIVE[$n]} ]] || continue
    log "  $n ${REF[$n]}: $(du -h "${ARCHIVE[$n]}" | cut -f1) / $("${BUILDAH[@]}" images --format '{{.Size}}' "${REF[$n]}" 2>/dev/null | head -1)"
  done
  [[ $ok == 1 ]] || die "verify failed; logs in $LOGS"
}

# --- main -------------------------------------------------------------------------------

main() {
  local mode=build targets=()
  while (($#)); do
    case $1 in
      -h|--help) usage; return 0 ;;
      --print-manifest) printf '%s\n' "$MANIFEST"; return 0 ;;
      --dry-run) mode=dry ;;
      verify) mode=verify ;;
      all) targets+=("${IMAGES[@]}") ;;
      base|operator|runner|redis|pause) targets+=("$1") ;;
      *) printf 'usage: %s [all|base|operator|runner|redis|pause|verify|--dry-run|--print-manifest|--help]\n' "$0" >&2
         return 2 ;;
    esac
    shift
  done
  ((${#targets[@]})) || targets=("${IMAGES[@]}")
  mkdir -p "$LOGS" "$WORK" "$CACHE/tmp"
  export TMPDIR=$CACHE/tmp

  if [[ $mode == dry ]]; then
    plan_all 0
    local n state
    for n in "${targets[@]}"; do
      if [[ -z ${HASH[$n]:-} ]]; then state="unknown: ${NOTE[$n]}"
      elif [[ -f ${ARCHIVE[$n]} ]]; then state=cached
      else state="to build"; fi
      printf '%-9s %-60s %s  [%s]\n' "$n" "${REF[$n]:--}" "${ARCHIVE[$n]:--}" "$state"
    done
    return 0
  fi

  need buildah buildah; need python3 python3
  exec 9>"$CACHE/.lock"
  flock -n 9 || { log "waiting for another build-images run ($CACHE/.lock)"; flock 9; }
  plan_all 0
  if [[ $mode == verify ]]; then verify; return; fi
  local t0 n; t0=$(now)
  for n in "${IMAGES[@]}"; do   # in dependency order, whatever order they were asked in
    [[ " ${targets[*]} " == *" $n "* ]] && build "$n"
  done
  write_manifest
  log "done in $(secs "$t0"); manifest: $MANIFEST"
}

main "$@"
