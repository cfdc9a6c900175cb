#!/usr/bin/env bash
# Configures and builds shardps into build/ (executables in build/bin). Extra args go to cmake.
# SHARDPS_BUILD_DIR selects another directory.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${SHARDPS_BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
# SHARDPS_BUILD_TARGETS (space-separated) builds only those targets (and what they need).
# shellcheck disable=SC2086
cmake --build "$BUILD_DIR" -j"$(nproc)" ${SHARDPS_BUILD_TARGETS:+--target $SHARDPS_BUILD_TARGETS}
