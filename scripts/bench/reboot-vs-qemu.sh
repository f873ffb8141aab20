#!/usr/bin/env bash
# Measures `kbuild verify` after a fresh install (reboot into the new kernel,
# wait for SSH, run the four checks to PASS) against a bare QEMU boot of the
# same kernel, initramfs and disk plus one SSH command. Runs alternate, so
# both see the same load.
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
qemu_pidfile=$work/bare/qemu.pid
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

# Seconds of `kbuild verify` right after an install: reboot, SSH, checks, PASS.
time_kbuild() {
  local start end
  "$kbuild" "${project[@]}" up --accel tcg >/dev/null 2>&1
  "$kbuild" "${project[@]}" patch-and-build --on-host >>"$work/build.log" 2>&1
  start=$(date +%s.%N)
  "$kbuild" "${project[@]}" verify >>"$work/verify.log" 2>&1
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

# Runs a command in the guest with the OpenSSH client, which passes binary
# output through unchanged.
guest() {
  local ssh_port
  ssh_port=$("$kbuild" "${project[@]}" status | sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p')
  ssh -q -i "$work/project/.kbuild/ssh/id_ed25519" -p "$ssh_port" -o BatchMode=yes \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null debian@127.0.0.1 "$@"
}

# Saves what the bare boot needs from the guest: root file system UUID,
# kernel release and its initramfs, then shuts the VM down.
save_guest_files() {
  release=$(guest uname -r)
  root_uuid=$(guest findmnt -no UUID /)
  guest sudo cat "/boot/initrd.img-$release" >"$work/initrd.img"
  cp "$work/project/.kbuild/guest/stage/boot/vmlinuz" "$work/vmlinuz"
  "$kbuild" "${project[@]}" down >/dev/null 2>&1
}

# Seconds from starting QEMU on a snapshot of the VM's disk, with the same
# kernel and initramfs given directly, to the first successful `ssh true`.
time_bare() {
  local dir=$work/bare start ssh_port
  rm -rf "$dir" && mkdir -p "$dir"
  ssh_port=$(free_port)
  start=$(date +%s.%N)
  qemu-system-x86_64 -machine q35 -accel tcg -smp 2 -m 1024 -snapshot \
    -drive "file=$vm/disk.qcow2,if=virtio,format=qcow2" \
    -drive "file=$vm/seed.img,if=virtio,format=raw,readonly=on" \
    -netdev "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:$ssh_port-:22" \
    -device virtio-net-pci,netdev=net0 -device virtio-rng-pci \
    -kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
    -append "root=UUID=$root_uuid ro console=ttyS0,115200" \
    -serial "file:$dir/console.log" -nodefaults -no-user-config -display none \
    -daemonize -pidfile "$qemu_pidfile"
  until ssh -q -i "$work/project/.kbuild/ssh/id_ed25519" -p "$ssh_port" -o BatchMode=yes \
    -o ConnectTimeout=2 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    debian@127.0.0.1 true; do
    if [ "$(echo "$(date +%s.%N) - $start > 600" | bc)" = 1 ]; then
      echo "bare boot: no SSH after 600 s; console: $dir/console.log" >&2
      break
    fi
    sleep 0.25
  done
  echo "$(date +%s.%N) - $start" | bc
  kill "$(cat "$qemu_pidfile")"
  rm -f "$qemu_pidfile"
  sleep 1
}

echo "run kbuild_verify_seconds bare_boot_ssh_seconds"
for run in $(seq "$runs"); do
  kbuild_seconds=$(time_kbuild)
  save_guest_files
  echo "$run $kbuild_seconds $(time_bare)"
done
