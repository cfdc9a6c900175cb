#!/usr/bin/env bash
# Installs everything shardps needs to build, test and run on Debian 12.
# Idempotent: when every package is already present it returns in well under a second.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git ccache
  openmpi-bin libopenmpi-dev
  libeigen3-dev
  protobuf-compiler libprotobuf-dev
  libboost-dev libboost-program-options-dev
  libgtest-dev libgmock-dev googletest
  libssl-dev
  zlib1g-dev
  dataset-fashion-mnist
  python3-numpy python3-matplotlib
  liblinear-tools
  clang-14 libclang-rt-14-dev
  slurm-wlm munge
  iproute2
  prometheus
  nlohmann-json3-dev
  pybind11-dev python3-dev python3-pytest python3-torch
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

echo "setup: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
