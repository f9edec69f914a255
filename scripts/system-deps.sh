#!/usr/bin/env bash
# Installs the system packages that some tests need (QGIS for the plugin, Chromium for the audit page).
# Each script in scripts/system-deps/ is idempotent: it returns at once when its packages are present.
# Without root it only reports what is missing; those tests then skip, except in CI (CI=true), where a
# missing system dependency fails the run.
set -euo pipefail
cd "$(dirname "$0")"
for script in system-deps/*.sh; do
  [ -e "$script" ] || continue
  bash "$script"
done
