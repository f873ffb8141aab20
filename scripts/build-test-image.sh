#!/usr/bin/env bash
# Builds the Debian 12 (bookworm) amd64 disk image that kbuild's VM tests boot,
# and copies it with a SHA256SUMS file into OUTPUT_DIR. Run as root.
#
# The image is cached in KBUILD_IMAGE_CACHE (default /var/cache/kbuild-test/images)
# under a key made from the sha256 of this script and its package list, so it is
# rebuilt only when this script changes or the keyed file is missing.
#
# The guest boots with GRUB (BIOS) on ttyS0, takes its address by DHCP on every
# ethernet device through systemd-networkd, and gets the `debian` user and its
# SSH key from a cloud-init NoCloud seed (a disk labelled cidata). It has no
# passwords and accepts no password logins. SSH host keys are removed from the
# image, so each guest generates its own on first boot. Apt package lists are
# removed too: run `apt-get update` in the guest before installing packages.
# The guest's only apt source is a local repository in /srv/kbuild-test-repo
# that holds bc and its dependencies, so tests can install a package with no
# network. The other kernel build tools (gcc, make, flex, bison and the libelf
# and libssl headers) are installed in the image, because installing them under
# TCG would add minutes to every test run.
#
# Prints the path of the copied image on stdout; progress goes to stderr.
set -Eeuo pipefail

readonly image_name=debian-12-kbuild-test.qcow2
readonly suite=bookworm
readonly disk_size=4G
readonly fs_label=kbuild-root
readonly packages=(
  linux-image-amd64 grub-pc udev kmod systemd-sysv systemd-resolved netbase iproute2
  openssh-server cloud-init cloud-guest-utils sudo ca-certificates
  gcc libc6-dev make flex bison libelf-dev libssl-dev cpio xz-utils
)

if [ "$#" -ne 1 ]; then
  echo "usage: $0 OUTPUT_DIR" >&2
  exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "build-test-image: run as root (for example: sudo $0 $1)" >&2
  exit 2
fi

output_dir=$1
cache_dir=${KBUILD_IMAGE_CACHE:-/var/cache/kbuild-test/images}
script_path=$(readlink -f "${BASH_SOURCE[0]}")

# Reads the mirror URI from the first stanza of the host's apt sources, so no
# mirror host name is written in this repository.
mirror_uri() {
  local sources=/etc/apt/sources.list.d/debian.sources uri
  if [ ! -f "$sources" ]; then
    echo "build-test-image: $sources not found (its first stanza names the Debian mirror to use)" >&2
    return 1
  fi
  uri=$(awk 'BEGIN { RS = "" } NR == 1' "$sources" | awk '$1 == "URIs:" { print $2; exit }')
  if [ -z "$uri" ]; then
    echo "build-test-image: no URIs line in the first stanza of $sources" >&2
    return 1
  fi
  echo "$uri"
}

# Loop device, partition nodes and work folder that cleanup() removes on exit.
work_dir=
loop_dev=
part_dev=
made_nodes=()

cleanup() {
  local node
  if [ -n "$work_dir" ] && mountpoint -q "$work_dir/root"; then
    umount -R "$work_dir/root" || umount -R -l "$work_dir/root" || true
  fi
  if [ -n "$loop_dev" ]; then
    losetup -d "$loop_dev" || true
  fi
  for node in "${made_nodes[@]}"; do
    rm -f "$node"
  done
  if [ -n "$work_dir" ]; then
    rm -rf "$work_dir"
  fi
}

# Sets part_dev to the first partition of the loop device. When neither udev
# nor devtmpfs made its node, partx -a and then mknod from sysfs create it.
# NOTE: only the devtmpfs case has run (it makes the node here), so the
# partx and mknod fallbacks are untested.
find_partition() {
  local loop=$1 name part sys_dev
  name=$(basename "$loop")
  part=${loop}p1
  sys_dev=/sys/block/$name/${name}p1/dev
  if [ ! -e "$sys_dev" ]; then
    partx -a "$loop" >&2 || true
  fi
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    [ -e "$sys_dev" ] && break
    sleep 0.5
  done
  if [ ! -e "$sys_dev" ]; then
    echo "build-test-image: partition 1 of $loop did not appear in $sys_dev" >&2
    return 1
  fi
  if [ ! -b "$part" ]; then
    mknod "$part" b "$(cut -d: -f1 "$sys_dev")" "$(cut -d: -f2 "$sys_dev")"
    made_nodes+=("$part")
  fi
  part_dev=$part
}

# Installs the packages into the mounted root file system with mmdebstrap,
# leaving out documentation now and in later installs inside the guest.
bootstrap_root() {
  local root=$1 mirror=$2 list
  require_mounted_root "$root"
  list=$(IFS=,; echo "${packages[*]}")
  mmdebstrap --mode=root --variant=minbase --components=main --include="$list" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    "$suite" "$root" "deb $mirror $suite main"
}

# Fails unless $1 is a mount point other than /, so that a step which edits
# the guest can never write into the host's own /etc.
require_mounted_root() {
  if [ -z "$1" ] || [ "$1" = / ] || ! mountpoint -q "$1"; then
    echo "build-test-image: '$1' is not the mounted image root; stopped before editing it" >&2
    return 1
  fi
}

# Writes the guest's configuration: fstab, GRUB defaults, DHCP, cloud-init and SSH.
configure_root() {
  local root=$1 uuid=$2
  require_mounted_root "$root"
  printf 'UUID=%s / ext4 errors=remount-ro 0 1\n' "$uuid" >"$root/etc/fstab"
  echo debian >"$root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 debian\n::1 localhost ip6-localhost ip6-loopback\n' \
    >"$root/etc/hosts"

  mkdir -p "$root/etc/default/grub.d"
  cat >"$root/etc/default/grub.d/50-kbuild-test.cfg" <<'EOF'
GRUB_TIMEOUT=1
GRUB_TIMEOUT_STYLE=menu
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_CMDLINE_LINUX="console=ttyS0,115200"
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_DISABLE_LINUX_UUID=false
GRUB_DISABLE_OS_PROBER=true
EOF

  cat >"$root/etc/systemd/network/80-kbuild-test-dhcp.network" <<'EOF'
[Match]
Type=ether

[Network]
DHCP=yes
EOF
  chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service
  ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

  # systemd-networkd configures the network, so cloud-init must not write its own.
  # C.UTF-8 is built into glibc, so the locale module has nothing to generate
  # (its default, en_US.UTF-8, fails here). RSA and DSA host keys are left out
  # because generating all four types took about 15 s under QEMU TCG on 2 cores.
  cat >"$root/etc/cloud/cloud.cfg.d/90-kbuild-test.cfg" <<'EOF'
datasource_list: [ NoCloud, None ]
network:
  config: disabled
locale: C.UTF-8
ssh_genkeytypes: [ ed25519, ecdsa ]
EOF
  echo LANG=C.UTF-8 >"$root/etc/default/locale"

  cat >"$root/etc/ssh/sshd_config.d/50-kbuild-test.conf" <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
EOF
  # cloud-init generates host keys on an instance's first boot, before ssh.service
  # starts. The drop-in makes an ed25519 key when none is there, for a boot where
  # cloud-init did not run or a key file was left empty by a killed VM. Its $$
  # is systemd's escape for a literal $.
  rm -f "$root"/etc/ssh/ssh_host_*
  mkdir -p "$root/etc/systemd/system/ssh.service.d"
  cat >"$root/etc/systemd/system/ssh.service.d/50-host-keys.conf" <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'k=/etc/ssh/ssh_host_ed25519_key; test -s $$k || { rm -f $$k $$k.pub; ssh-keygen -q -t ed25519 -N "" -f $$k; }'
ExecStartPre=/usr/sbin/sshd -t
EOF

  # Periodic apt runs would take the dpkg lock while a test installs packages.
  chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer

  # An empty machine-id makes systemd generate a new one on each clone's first boot.
  : >"$root/etc/machine-id"
  rm -f "$root/var/lib/dbus/machine-id"
}

# Rebuilds the initramfs now that fstab names the root file system (so it
# carries fsck), installs GRUB to the loop device's MBR and writes grub.cfg
# with root=UUID=.
install_boot() {
  local root=$1 loop=$2 uuid=$3 cfg=$1/boot/grub/grub.cfg
  require_mounted_root "$root"
  mount --bind /dev "$root/dev"
  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys"
  chroot "$root" update-initramfs -u -k all
  chroot "$root" grub-install --target=i386-pc "$loop"
  chroot "$root" update-grub

  # Without /dev/disk/by-uuid, grub-mkconfig names the loop partition as root.
  sed -i -E "s#root=/dev/loop[0-9]+p[0-9]+#root=UUID=$uuid#g" "$cfg"
  umount "$root/sys" "$root/proc" "$root/dev"
  verify_grub_cfg "$cfg" "$uuid"
}

# Fails when grub.cfg names a loop device as root or boots no root=UUID=$2.
verify_grub_cfg() {
  local cfg=$1 uuid=$2
  if grep -E 'root=[^ ]*loop' "$cfg" >&2; then
    echo "build-test-image: $cfg still names a loop device as root (lines above)" >&2
    return 1
  fi
  if ! grep -E "^[[:space:]]*linux[[:space:]].*root=UUID=$uuid( |$)" "$cfg" >/dev/null; then
    echo "build-test-image: no linux line in $cfg boots root=UUID=$uuid" >&2
    return 1
  fi
}

# Packages that kbuild's tests install in the guest from a local repository,
# because the test VMs have no network. bc is what they ask for; the others
# are its dependencies.
readonly repository_packages=(bc libreadline8 readline-common)
readonly repository_dir=/srv/kbuild-test-repo

# Puts the .deb files of repository_packages into a flat repository inside the
# guest and makes it the guest's only apt source, so apt needs no network.
add_local_repository() {
  local root=$1 repo=$1$repository_dir deb
  require_mounted_root "$root"
  mkdir -p "$repo"
  (cd "$repo" && apt-get download -q "${repository_packages[@]}") 2>&1 | grep -v unsandboxed >&2 || true
  for deb in "$repo"/*.deb; do
    dpkg-deb -f "$deb"
    echo "Filename: ./$(basename "$deb")"
    echo "Size: $(stat -c %s "$deb")"
    echo "SHA256: $(sha256sum "$deb" | cut -d' ' -f1)"
    echo
  done >"$repo/Packages"
  if [ "$(grep -c '^Package:' "$repo/Packages")" -ne "${#repository_packages[@]}" ]; then
    echo "build-test-image: expected ${#repository_packages[@]} packages in $repo/Packages" >&2
    return 1
  fi
  rm -f "$root"/etc/apt/sources.list.d/*
  echo "deb [trusted=yes] file:$repository_dir ./" >"$root/etc/apt/sources.list"
}

# Removes apt caches, package lists and logs, and discards freed blocks so the
# raw file stays sparse.
shrink_root() {
  local root=$1
  require_mounted_root "$root"
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
  find "$root/var/log" -type f -delete
  rm -rf "$root"/tmp/* "$root"/var/tmp/*
  fstrim "$root"
}

# Builds the image into the file named by $1.
build_image() {
  local target=$1 mirror raw root part uuid
  mirror=$(mirror_uri)
  work_dir=$(mktemp -d "$cache_dir/build.XXXXXX")
  chmod 755 "$work_dir"
  raw=$work_dir/disk.raw
  root=$work_dir/root
  mkdir "$root"

  truncate -s "$disk_size" "$raw"
  printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk --quiet "$raw"
  loop_dev=$(losetup -f --show -P "$raw")
  find_partition "$loop_dev"
  part=$part_dev
  uuid=$(cat /proc/sys/kernel/random/uuid)
  mkfs.ext4 -q -L "$fs_label" -U "$uuid" -E lazy_itable_init=0,lazy_journal_init=0 "$part"
  mount "$part" "$root"

  bootstrap_root "$root" "$mirror"
  configure_root "$root" "$uuid"
  install_boot "$root" "$loop_dev" "$uuid"
  add_local_repository "$root"
  shrink_root "$root"

  umount "$root"
  losetup -d "$loop_dev"
  loop_dev=
  qemu-img convert -c -O qcow2 "$raw" "$work_dir/image.qcow2"
  mv "$work_dir/image.qcow2" "$target"
}

mkdir -p "$cache_dir" "$output_dir"
key=$({ cat "$script_path"; printf '%s\n' "${packages[@]}"; } | sha256sum | cut -c1-16)
cached=$cache_dir/debian-12-kbuild-test-$key.qcow2

# One build at a time per cache; a second caller waits and then reuses the image.
exec 9>"$cache_dir/.lock"
flock 9
trap cleanup EXIT
trap 'echo "build-test-image: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

if [ -f "$cached" ]; then
  echo "build-test-image: using cached $cached" >&2
else
  echo "build-test-image: building $cached" >&2
  build_image "$cached" >&2
  # Images keyed by older versions of this script are not used again.
  find "$cache_dir" -maxdepth 1 -name 'debian-12-kbuild-test-*.qcow2' ! -path "$cached" -delete
fi

cp "$cached" "$output_dir/.$image_name.tmp"
mv "$output_dir/.$image_name.tmp" "$output_dir/$image_name"
(cd "$output_dir" && sha256sum "$image_name" >.SHA256SUMS.tmp && mv .SHA256SUMS.tmp SHA256SUMS)
echo "$(readlink -f "$output_dir")/$image_name"
