#!/usr/bin/env bash
# QGIS for the plugin tests: Debian's QGIS with its Python bindings (they live in the system python3,
# not in the project's venv), the processing plugin, and python3-pytest to run tests/qgis_suite under it.
# Idempotent: returns at once when everything is present. Without root it only reports what is missing.
set -euo pipefail

packages=(qgis qgis-providers python3-qgis python3-pytest)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "system-deps/qgis.sh: missing ${missing[*]} (run as root to install); the QGIS tests skip outside CI" >&2
    exit 0
  fi
else
  SUDO=()
fi

echo "system-deps/qgis.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=900 update -q
"${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${packages[@]}"
