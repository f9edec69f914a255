#!/usr/bin/env bash
# Debian's chromium, driven by Playwright (executable_path) in the audit page's end-to-end test.
# Idempotent: returns at once when /usr/bin/chromium is present. Without root it only reports.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: chromium is missing (the audit page end-to-end test will skip; run as root to install)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=900 update -q
apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends chromium
