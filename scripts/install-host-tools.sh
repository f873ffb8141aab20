#!/usr/bin/env bash
# Installs the host tools kbuild needs on Debian 12 (bookworm): the kernel
# build dependencies, QEMU, and Debian's linux-source-6.1 for the example
# project and the tests. Run as root. Safe to run again.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-host-tools: run as root (for example: sudo $0)" >&2
  exit 2
fi

export DEBIAN_FRONTEND=noninteractive
sources=/etc/apt/sources.list.d

# Machines that carry qemu-utils from bookworm-backports cannot install the
# bookworm qemu-system-x86 beside it, so add the backports suite, copied from
# the first stanza of the existing sources file, and take QEMU from there.
backports=()
if [ -f "$sources/debian.sources" ] && [ ! -f "$sources/backports.sources" ]; then
  awk 'BEGIN { RS = ""; ORS = "\n" } NR == 1' "$sources/debian.sources" |
    sed 's/^Suites:.*/Suites: bookworm-backports/' >"$sources/backports.sources"
fi
if [ -f "$sources/backports.sources" ]; then
  backports=(-t bookworm-backports)
fi

apt-get update -q

apt-get install -y -q --no-install-recommends \
  build-essential bc flex bison libelf-dev libssl-dev dwarves pkg-config zlib1g-dev openssh-server openssh-client openssl \
  cpio gzip xz-utils ccache rsync linux-source-6.1 mmdebstrap fdisk e2fsprogs python3 \
  python3-jsonschema python3-junitparser

apt-get install -y -q --no-install-recommends "${backports[@]}" qemu-system-x86 qemu-utils
