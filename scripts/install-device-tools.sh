#!/usr/bin/env bash
# Installs the Debian packages the Cortex-M3 check needs (lstmq.cortex_m), when missing:
# an ARM bare-metal compiler and QEMU's ARM system emulator. Needs root (or sudo).
set -euo pipefail
missing=()
command -v arm-none-eabi-gcc >/dev/null || missing+=(gcc-arm-none-eabi libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null || missing+=(qemu-system-arm)
command -v cc >/dev/null || missing+=(gcc)
if [ ${#missing[@]} -eq 0 ]; then
  echo "device tools present: $(arm-none-eabi-gcc --version | head -1); $(qemu-system-arm --version | head -1)"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
