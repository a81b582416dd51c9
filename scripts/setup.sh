#!/usr/bin/env bash
# Idempotent set-up shared by scripts/demo.sh and scripts/test.sh:
#  1. the Debian packages edgec needs (Arm cross compiler, newlib, QEMU; the RISC-V cross compiler and
#     qemu-system-misc for esp32c3 (no rv32 libc is needed: picolibc-riscv64-unknown-elf is 978 MB and
#     left out); cmake; clang with its sanitizer and libFuzzer runtimes for the OTA receiver's fuzz test),
#     installed only when missing,
#     with --no-install-recommends (without it gcc-arm-none-eabi pulls a 1.5 GB C++ library), via sudo
#     when not root;
#  2. a virtualenv in .venv with the pinned Python packages from pyproject.toml, reinstalled only when
#     pyproject.toml changes;
#  3. the QEMU instruction-count plugin (edgec/toolchain/qemu_plugin), built with the host gcc.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for pkg in gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm gcc-riscv64-unknown-elf qemu-system-misc \
           cmake gcc make clang libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then need_pkgs+=(python3-venv); fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_pkgs[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
fi

stamp=.venv/.edgec-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  python3 -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned Python packages into .venv (first run takes a minute)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi
# The QEMU instruction-count plugin is built with the host gcc once (cached, rebuilt when its source changes).
.venv/bin/python -c "from edgec.toolchain.runner import insn_count_plugin; insn_count_plugin()"
