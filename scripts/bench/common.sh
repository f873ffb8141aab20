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
