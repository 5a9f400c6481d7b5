#!/usr/bin/env bash
# Install what kubescribe and its tests need on a fresh Debian machine:
# Debian packages (redis-server, redis-sentinel for the failover tests' sentinels,
# espeak-ng, sox for silence, noise and tone test audio;
# ffmpeg libraries come with PyAV wheels;
# buildah, umoci, mmdebstrap, gcc and libc6-dev for `make images`, hack/build-images.sh;
# containerd, runc, the CNI plugins, iptables for the real node in tests/envtest/realnode.py),
# and kubescribe with its runner, operator and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(redis-server redis-sentinel espeak-ng sox buildah umoci mmdebstrap gcc libc6-dev
      containerd runc containernetworking-plugins iptables iproute2 kmod)
if ! dpkg -s "${DEBS[@]}" >/dev/null 2>&1; then
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${DEBS[@]}"
fi
# redis-server's and redis-sentinel's Debian packages start system services on :6379 and
# :26379; the tests start their own servers on free ports and do not need them.

PY="${PYTHON:-python3}"
"$PY" -m pip install -q --disable-pip-version-check -e ".[all]"
