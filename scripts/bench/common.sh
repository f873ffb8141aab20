# shellcheck shell=bash
# Shared by the benchmark scripts: serve the Debian test image from
# 127.0.0.1 and write a profile that points at it. Source it; it needs
# $repo and $work set, and sets $server_pid and $port.

# Prints a free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Builds (or takes from the cache) the test image, compresses it with a sums
# file into $work/image and serves that folder over HTTP on 127.0.0.1.
serve_test_image() {
  local image
  image=$(bash "$repo/scripts/build-test-image.sh" "$work/image")
  gzip -1 -c "$image" >"$work/image/disk.qcow2.gz"
  (cd "$work/image" && sha256sum disk.qcow2.gz >SUMS)
  port=$(free_port)
  python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/image" >/dev/null 2>&1 &
  server_pid=$!
  sleep 1
}

# Writes the profile of the served image to $1.
write_bench_profile() {
  cat >"$1" <<PROFILE
name = "bench"
[image]
urls = ["http://127.0.0.1:$port/disk.qcow2.gz"]
checksum_url = "http://127.0.0.1:$port/SUMS"
format = "qcow2"
[machine]
backends = ["qemu"]
cpus = 2
memory_mib = 1024
disk_gib = 6
network = "isolated"
[login]
user = "debian"
method = "cloud-init"
[packages]
manager = "apt"
build_deps = ["kmod"]
PROFILE
}

# Boots QEMU with kbuild's settings on disk $1 and seed $2, console and pid
# file in folder $3, plus any further QEMU arguments, and prints the seconds
# until the first successful `ssh true` with the project key (at most 600).
# Leaves QEMU running; its pid is in $3/qemu.pid.
time_bare_boot() {
  local disk=$1 seed=$2 dir=$3 start ssh_port
  shift 3
  ssh_port=$(free_port)
  start=$(date +%s.%N)
  qemu-system-x86_64 -machine q35 -accel tcg -smp 2 -m 1024 "$@" \
    -drive "file=$disk,if=virtio,format=qcow2" \
    -drive "file=$seed,if=virtio,format=raw,readonly=on" \
    -netdev "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:$ssh_port-:22" \
    -device virtio-net-pci,netdev=net0 -device virtio-rng-pci \
    -serial "file:$dir/console.log" -nodefaults -no-user-config -display none \
    -daemonize -pidfile "$dir/qemu.pid"
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
}
