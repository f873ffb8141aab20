#!/usr/bin/env bash
# Measures `kbuild verify` after a fresh install, from the reboot request to
# PASS, as kbuild prints it. The whole command, with its connect and test
# program steps before the reboot, is printed too. The bare side boots the
# same disk with QEMU, through GRUB into the same one-time entry, and runs one
# SSH command. Runs alternate, so both see the same load.
#
# Usage (as root, from the repository): scripts/bench/reboot-vs-qemu.sh [RUNS]
# Needs: a release build (cargo build --release), the Debian test image
# (scripts/build-test-image.sh, cached), Debian's linux-source-6.1 unpacked in
# KBUILD_TREE (default /var/cache/kbuild-dev/linux-source-6.1, only read),
# python3 for a file server on 127.0.0.1.
set -euo pipefail

runs=${1:-3}
repo=$(cd "$(dirname "$0")/../.." && pwd)
kbuild=$repo/target/release/kbuild
tree_source=${KBUILD_TREE:-/var/cache/kbuild-dev/linux-source-6.1}
work=$(mktemp -d /var/tmp/kbuild-bench-reboot.XXXXXX)
server_pid=
qemu_pidfile=$work/bare/qemu.pid  # written by time_bare_boot
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  [ -f "$qemu_pidfile" ] && kill "$(cat "$qemu_pidfile")" 2>/dev/null
  "$kbuild" --project "$work/project/kbuild.toml" destroy >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=scripts/bench/common.sh
source "$repo/scripts/bench/common.sh"
serve_test_image

cp -al "$tree_source" "$work/linux"
mkdir -p "$work/project" "$work/home"
export HOME=$work/home CI=true KBUILD_CACHE_DIR=$work/cache
export CCACHE_DIR=${CCACHE_DIR:-/var/cache/kbuild-test/ccache} CCACHE_BASEDIR=$work
"$kbuild" init --name kbuild_add --dir "$work/project" --source "$work/linux" >/dev/null 2>&1
sed -i 's|^profile = .*|profile = "bench.toml"\nconfig = "tinyconfig"|' "$work/project/kbuild.toml"
write_bench_profile "$work/project/bench.toml"
project=(--project "$work/project/kbuild.toml")
vm=$work/project/.kbuild/vm

# Prints kbuild's reboot-to-PASS seconds and the whole `kbuild verify`
# command's seconds, right after an install.
time_kbuild() {
  local start end
  "$kbuild" "${project[@]}" up --accel tcg >/dev/null 2>&1
  "$kbuild" "${project[@]}" patch-and-build --on-host >>"$work/build.log" 2>&1
  start=$(date +%s.%N)
  "$kbuild" "${project[@]}" verify >"$work/verify.out" 2>&1
  end=$(date +%s.%N)
  cat "$work/verify.out" >>"$work/verify.log"
  echo "$(sed -n 's/.* \([0-9.]*\)s after the reboot request.*/\1/p' "$work/verify.out") \
$(echo "$end - $start" | bc)"
}

# Runs a command in the guest with the OpenSSH client, which passes binary
# output through unchanged.
guest() {
  local ssh_port
  ssh_port=$("$kbuild" "${project[@]}" status | sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p')
  ssh -q -i "$work/project/.kbuild/ssh/id_ed25519" -p "$ssh_port" -o BatchMode=yes \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null debian@127.0.0.1 "$@"
}

# Arms the same one-time GRUB entry that verify used, then shuts the VM down,
# so the bare boot of the disk starts the same kernel the same way.
arm_and_stop() {
  local entry
  entry=$(sed -n 's/^entry = "\(.*\)"$/\1/p' "$work/project/.kbuild/guest/installed.toml")
  guest sudo grub-reboot "$entry"
  "$kbuild" "${project[@]}" down >/dev/null 2>&1
}

# Seconds from starting QEMU on a snapshot of the VM's disk (kbuild's QEMU
# settings, firmware and GRUB included) to the first successful `ssh true`.
time_bare() {
  local dir=$work/bare
  rm -rf "$dir" && mkdir -p "$dir"
  time_bare_boot "$vm/disk.qcow2" "$vm/seed.img" "$dir" -snapshot
  grep -q "Linux version $(cat "$work/release")" "$dir/console.log" ||
    echo "bare boot did not start linux $(cat "$work/release")" >&2
  kill "$(cat "$qemu_pidfile")"
  rm -f "$qemu_pidfile"
  sleep 1
}

echo "run kbuild_reboot_to_pass_seconds kbuild_verify_command_seconds bare_boot_ssh_seconds"
for run in $(seq "$runs"); do
  kbuild_seconds=$(time_kbuild)
  guest uname -r >"$work/release"
  arm_and_stop
  echo "$run $kbuild_seconds $(time_bare)"
done
