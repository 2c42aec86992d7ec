#!/usr/bin/env bash
# Idempotent setup: installs every build and test dependency from Debian packages.
# Usage: bash scripts/setup.sh   (as root, or with sudo available)
set -euo pipefail
PKGS=(build-essential cmake ninja-build ccache pkg-config git
      libabsl-dev libhwy-dev libgtest-dev libgmock-dev libbenchmark-dev
      libcli11-dev nlohmann-json3-dev libxxhash-dev libpcre2-dev
      libprotobuf-dev protobuf-compiler libonnx-dev libcpp-httplib-dev python3 libicu-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
