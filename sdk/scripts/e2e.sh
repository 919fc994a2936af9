#!/usr/bin/env bash
# Build the SDK and run the browser scenarios (tests/e2e/browser.mjs) in headless Debian Chromium.
#   sdk/scripts/e2e.sh --api http://127.0.0.1:8000 [--site URL] [--report FILE]   against a running gateway
#   sdk/scripts/e2e.sh --fake-api                                                  against a tiny fake gateway
# The full run against a real edge node is tests/e2e/test_browser.py (pytest), which calls the same script.
set -euo pipefail
sdk="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ ! -d "$sdk/node_modules/playwright-core" ]]; then
  echo "sdk/node_modules is missing: run 'npm --prefix sdk ci' first." >&2
  exit 2
fi
(cd "$sdk" && node build.mjs)
exec node "$sdk/../tests/e2e/browser.mjs" "$@"
