#!/usr/bin/env bash
# Set up soulsai on a fresh Debian/Ubuntu machine: redis-server, a virtualenv in .venv with a
# pinned CPU torch (installed first, so nothing pulls a multi-GB CUDA build), soulsai itself
# (editable) with the full set of extras (server: the nodes; box2d: LunarLander) and the test
# tools; a sampling client alone needs only `pip install soulsai` (no torch). Safe to run again:
# it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools the tests need: Debian's redis-server (7.x: ACL selector tests), docker-compose
# (v1; validates the compose files, no engine needed), chromium (renders the live page headless),
# openssl (TLS test certificates) and prometheus (for its promtool: `promtool check metrics` on
# both nodes' /metrics). A tool that cannot be installed stops the set-up with a
# message saying which, because its tests would otherwise only skip (and fail under CI=true).
APT_UPDATED=0
need() {  # need COMMAND PACKAGE... : install the packages when COMMAND is missing
  local cmd=$1; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing $* (Debian packages, for $cmd)"
    if [ "$APT_UPDATED" = 0 ]; then apt-get update -qq >/dev/null || true; APT_UPDATED=1; fi
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
      >/tmp/soulsai-setup-apt.log 2>&1 && command -v "$cmd" >/dev/null 2>&1; then
      return 0
    fi
    echo "setup: FAILED to install $* ($cmd is needed by the tests); see /tmp/soulsai-setup-apt.log" >&2
    tail -5 /tmp/soulsai-setup-apt.log >&2
    exit 1
  fi
  if [ -n "${CI:-}" ] && [ "${CI}" != "false" ] && [ "${CI}" != "0" ]; then
    echo "setup: $cmd is missing and cannot be installed here (not root or no apt-get);" \
      "CI needs it: install $* first" >&2
    exit 1
  fi
  echo "setup: WARNING: $cmd is missing (install $*); the tests that need it will skip" >&2
}
need redis-server redis-server
need docker-compose docker-compose
need chromium chromium fonts-liberation
need openssl openssl
if ! command -v promtool >/dev/null 2>&1; then
  need promtool prometheus
  # only its promtool is wanted: on a host with systemd, the package starts a server on :9090
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  # Where the default index serves a CUDA build, set TORCH_INDEX_URL (README: CPU torch).
  echo "setup: installing torch==2.13.0 (CPU build)${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
  .venv/bin/python -m pip install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
echo "setup: installing soulsai with its server, box2d and test extras"
.venv/bin/python -m pip install -q -e ".[server,box2d,test]"
echo "setup: done (.venv/bin/soulsai --help)"
