#!/usr/bin/env bash
# Optional pieces for the dashboard's browser test (tests/test_dashboard.py), which skips and says
# why when they are absent: headless Chromium (Debian's `chromium`) and visdom's web assets, which
# `m3sgg dashboard --install-assets` fetches from the npm registry. Never fails the run.
set -uo pipefail
cd "$(dirname "$0")/.."

if command -v chromium >/dev/null 2>&1; then
  echo "chromium: $(command -v chromium)"
elif command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium ..."
  if ! (export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq chromium) >/tmp/m3sgg-chromium.log 2>&1; then
    echo "chromium could not be installed (see /tmp/m3sgg-chromium.log): the browser test will skip"
  fi
else
  echo "no apt-get: chromium not installed, the browser test will skip"
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "npm not found: visdom's web assets not installed, the browser test will skip"
elif .venv/bin/python -c 'from m3sgg.dashboard import missing_assets; raise SystemExit(bool(missing_assets()))'; then
  echo "visdom's web assets are already installed"
elif ! .venv/bin/m3sgg dashboard --install-assets; then
  echo "visdom's web assets could not be installed: the browser test will skip"
fi
exit 0
