#!/usr/bin/env bash
# Installs everything tq needs to build and test on a fresh Debian 12 machine (idempotent).
set -euo pipefail
pkgs=(build-essential cmake git unzip clang clang-format libgtest-dev libgmock-dev libbenchmark-dev
      libcpp-httplib-dev nlohmann-json3-dev libcli11-dev pkg-config python3 python3-pip)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Python is used only by the end-to-end tests and fixture scripts, never by the engine.
if [ "${TQ_PY_DEPS:-1}" = "1" ]; then
  python3 -c "import numpy, pytest, openai" 2>/dev/null || python3 -m pip install -q numpy pytest openai
fi
echo "install-deps: ok"
