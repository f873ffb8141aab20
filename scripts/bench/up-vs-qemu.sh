#!/usr/bin/env bash
# Measures the time from `kbuild up` to its first SSH login on a cached image,
# against a bare QEMU command booting the same image with the same settings
# and an ssh polling loop. Runs alternate, so both see the same load.
#
# Usage (as root, from the repository): scripts/bench/up-vs-qemu.sh [RUNS]
# Needs: a release build (cargo build --release), the Debian test image
# (scripts/build-test-image.sh, cached), python3 for a file server on 127.0.0.1.
set -euo pipefail

runs=${1:-3}
repo=$(cd "$(dirname "$0")/../.." && pwd)
kbuild=$repo/target/release/kbuild
work=$(mktemp -d /var/tmp/kbuild-bench-up.XXXXXX)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  "$kbuild" --project "$work/project/kbuild.toml" destroy >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=scripts/bench/common.sh
source "$repo/scripts/bench/common.sh"
serve_test_image

mkdir -p "$work/project" "$work/home"
export HOME=$work/home CI=true KBUILD_CACHE_DIR=$work/cache
"$kbuild" init --dir "$work/project" --source linux >/dev/null 2>&1
sed -i 's|^profile = .*|profile = "bench.toml"|' "$work/project/kbuild.toml"
write_bench_profile "$work/project/bench.toml"
project=(--project "$work/project/kbuild.toml")

# Fills the image cache and keeps the seed for the bare runs, then removes the VM.
"$kbuild" "${project[@]}" up --accel tcg >/dev/null 2>&1
cp "$work/project/.kbuild/vm/seed.img" "$work/seed.img"
"$kbuild" "${project[@]}" destroy >/dev/null 2>&1

# Seconds from `kbuild up` to its "Connected" line.
time_kbuild() {
  local start line
  start=$(date +%s.%N)
  while IFS= read -r line; do
    case $line in *Connected*) echo "$(date +%s.%N) - $start" | bc; break ;; esac
  done < <("$kbuild" "${project[@]}" up --accel tcg 2>&1)
  "$kbuild" "${project[@]}" destroy >/dev/null 2>&1
}

# Seconds from starting QEMU to the first successful `ssh true`, with a
# fresh overlay and the seed kbuild wrote, and kbuild's QEMU settings.
time_bare() {
  local dir=$work/bare base
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$work/seed.img" "$dir/seed.img"
  base=$(find "$work/cache/images" -name 'disk.qcow2' | head -n 1)
  qemu-img create -q -f qcow2 -F qcow2 -b "$base" "$dir/disk.qcow2" 6G
  time_bare_boot "$dir/disk.qcow2" "$dir/seed.img" "$dir"
  kill "$(cat "$dir/qemu.pid")"
}

echo "run kbuild_seconds bare_seconds"
for run in $(seq "$runs"); do
  echo "$run $(time_kbuild) $(time_bare)"
done
