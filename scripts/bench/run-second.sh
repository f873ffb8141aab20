#!/usr/bin/env bash
# Measures a second `kbuild run` in which every step is still valid, against
# the plain tools that answer the same question by hand:
#   - VM mode: one `ssh ... true` into the VM with the OpenSSH client, the
#     time to confirm that the VM responds, which kbuild also has to spend;
#   - direct mode: a no-op `make bzImage` in the same build folder (how a
#     developer checks that nothing needs building; the same make arguments
#     as kbuild, CC="ccache gcc" included, so make finds nothing to do).
# Runs alternate, so both sides see the same load. Also prints kbuild's peak
# memory (max RSS, KiB) from /usr/bin/time.
#
# Usage (as root, from the repository): scripts/bench/run-second.sh [RUNS]
# BENCH_VM=0 measures the direct mode alone.
# Needs: a release build (cargo build --release), the Debian test image
# (scripts/build-test-image.sh, cached), Debian's linux-source-6.1 unpacked in
# KBUILD_TREE (default: the test cache's tree, only read), python3 for a file
# server on 127.0.0.1, /usr/bin/time.
set -euo pipefail

runs=${1:-10}
repo=$(cd "$(dirname "$0")/../.." && pwd)
kbuild=$repo/target/release/kbuild
tree_source=${KBUILD_TREE:-$(ls -d /var/cache/kbuild-test/trees/linux-source-6.1-* | head -n 1)}
work=$(mktemp -d /var/tmp/kbuild-bench-run.XXXXXX)
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

cp -al "$tree_source" "$work/linux"
mkdir -p "$work/project" "$work/home"
export HOME=$work/home CI=true KBUILD_CACHE_DIR=$work/cache
export CCACHE_DIR=${CCACHE_DIR:-/var/cache/kbuild-test/ccache} CCACHE_BASEDIR=$work
"$kbuild" init --name kbuild_add --dir "$work/project" --source "$work/linux" >/dev/null 2>&1
sed -i 's|^profile = .*|profile = "bench.toml"\nconfig = "tinyconfig"|' "$work/project/kbuild.toml"
write_bench_profile "$work/project/bench.toml"
project=(--project "$work/project/kbuild.toml")

# Seconds of one command, its output appended to $work/bench.log.
seconds() {
  local start end
  start=$(date +%s.%N)
  "$@" >>"$work/bench.log" 2>&1
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

# Peak memory of one all-valid run, in KiB.
peak_kib() {
  /usr/bin/time -f '%M' -o "$work/rss" "$kbuild" "${project[@]}" run "$@" >/dev/null 2>&1
  cat "$work/rss"
}

# A second run that ran a step would not measure what it claims.
check_all_valid() {
  "$kbuild" "${project[@]}" run "$@" 2>&1 | grep -q '(steps run: 0,' ||
    { echo "a repeated run still ran steps; see $work/bench.log" >&2; exit 1; }
}

ssh_true() {
  local ssh_port
  ssh_port=$(sed -n 's/^ssh_port = \([0-9]*\)$/\1/p' "$work/project/.kbuild/vm/vm.toml")
  ssh -q -i "$work/project/.kbuild/ssh/id_ed25519" -p "$ssh_port" -o BatchMode=yes \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null debian@127.0.0.1 true
}

# The same make command line as kbuild's build (default target, no -s):
# with another target or -s, make rewrote bzImage on every call.
make_noop() {
  make -C "$work/linux" O="$work/project/build" ARCH=x86_64 "CC=ccache gcc" -j2
}

if [ "${BENCH_VM:-1}" = 1 ]; then
  echo "first VM run: $(seconds "$kbuild" "${project[@]}" run --accel tcg) s" >&2
  check_all_valid
  echo "vm_run kbuild_second_run_seconds ssh_true_seconds"
  for run in $(seq "$runs"); do
    echo "$run $(seconds "$kbuild" "${project[@]}" run) $(seconds ssh_true)"
  done
  echo "vm peak RSS KiB: $(peak_kib)"
fi

echo "first direct run: $(seconds "$kbuild" "${project[@]}" run --direct --accel tcg) s" >&2
check_all_valid --direct
echo "direct_run kbuild_second_run_seconds make_noop_seconds"
for run in $(seq "$runs"); do
  echo "$run $(seconds "$kbuild" "${project[@]}" run --direct) $(seconds make_noop)"
done
echo "direct peak RSS KiB: $(peak_kib --direct)"
