#!/usr/bin/env bash
# The project virtualenv: `hack/venv.sh EXTRAS` creates .venv (git-ignored) from the
# interpreter found, installs kubescribe into it editable with the given extras
# (`runner` for the demo, `all` for the tests) and prints the venv's python.
#
# Nothing is installed into the system interpreter (a stock Debian or Ubuntu refuses
# that anyway, PEP 668), and no Python here runs with the repository root on sys.path:
# the top-level operator/ folder would hide the standard library's `operator`. The
# interpreter is `$PY`, else `$PYTHON`, else python3; Python 3.11 or later.
#
# Exit codes: 0 done; 3 no usable interpreter (the message says which to install);
# 4 the venv could not be created or the install failed (pip's own message is above).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
EXTRAS="${1:-all}"
VENV="${KUBESCRIBE_VENV:-$ROOT/.venv}"
PY="${PY:-${PYTHON:-python3}}"

say() { printf 'kubescribe: %s\n' "$*" >&2; }

if ! command -v "$PY" >/dev/null 2>&1; then
  say "no Python interpreter '$PY'; install Python 3.11+ (Debian/Ubuntu: apt-get install python3 python3-venv) or set PY=/path/to/python3"
  exit 3
fi
PY=$(command -v "$PY")
if ! "$PY" -I -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "$PY is Python $("$PY" -I -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo '?'); kubescribe needs 3.11 or later: set PY=/path/to/python3.11"
  exit 3
fi
PY_REAL=$("$PY" -I -c 'import os, sys; print(os.path.realpath(sys.executable))')

# A venv made from another interpreter is made again (PY=... switches it).
if [[ -x $VENV/bin/python && "$(cat "$VENV/.kubescribe-python" 2>/dev/null)" != "$PY_REAL" ]]; then
  say "$VENV was made from $(cat "$VENV/.kubescribe-python" 2>/dev/null || echo 'another interpreter'); making it again from $PY_REAL"
  rm -rf "$VENV"
fi

if ! "$VENV/bin/python" -I -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$VENV"
  # Debian and Ubuntu ship venv's ensurepip in a separate package.
  if ! "$PY" -I -c 'import ensurepip, venv' >/dev/null 2>&1; then
    ver=$("$PY" -I -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if command -v apt-get >/dev/null 2>&1; then
      say "$PY has no venv module (ensurepip); installing Debian's python$ver-venv, the one package missing"
      SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
      $SUDO apt-get update -q >&2
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "python$ver-venv" >&2
    else
      say "$PY has no venv module (ensurepip); install your distribution's python$ver venv package"
      exit 3
    fi
  fi
  say "creating $VENV from $PY_REAL"
  "$PY" -I -m venv "$VENV" >&2 || { say "could not create $VENV from $PY (its message is above)"; exit 4; }
  echo "$PY_REAL" >"$VENV/.kubescribe-python"
  # The repository's own packages for tests and benchmarks (tests.*, benchmarks.*, harness.*),
  # appended after the standard library so that operator/ cannot hide `operator`.
  site=$("$VENV/bin/python" -I -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  echo "$ROOT" >"$site/kubescribe-repository.pth"
fi

# Install once per set of extras and pyproject.toml; a warm run only checks the stamp.
hash=$(sha256sum pyproject.toml | cut -c1-16)
stamp="$VENV/.kubescribe-installed-$EXTRAS-$hash"
# `all` holds every other set of extras.
if [[ ! -f $stamp && ! -f $VENV/.kubescribe-installed-all-$hash ]]; then
  say "installing kubescribe[$EXTRAS] into $VENV"
  "$VENV/bin/python" -I -m pip install -q --disable-pip-version-check -e "$ROOT[$EXTRAS]" >&2 \
    || { say "kubescribe[$EXTRAS] did not go into $VENV (pip's message is above)"; exit 4; }
  rm -f "$VENV"/.kubescribe-installed-"$EXTRAS"-*
  touch "$stamp"
fi
echo "$VENV/bin/python"
