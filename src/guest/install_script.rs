//! The shell scripts that install a staged kernel in the guest, written
//! from the profile's tools. Every value is shell-quoted; the scripts are
//! pure text so they can be read and tested without a VM.
//!
//! The stage folder contains `boot/vmlinuz`, `boot/System.map`, `boot/config`
//! and `lib/modules/<release>/`, as both the in-guest build and the host
//! push leave it.

use crate::profile::{BootSpec, BootloaderTool, InitramfsTool};
use crate::ssh::shell_quote;

/// Prefix of the lines the scripts print for kbuild to read.
pub const REPORT_PREFIX: &str = "kbuild-install: ";

/// File that marks a modules folder as installed by kbuild. A kernel of the
/// same release without it belongs to the distribution and is never replaced.
pub const MARKER: &str = ".kbuild-installed";

/// GRUB drop-in that makes GRUB boot the saved entry (the fallback kernel).
pub const GRUB_DROP_IN: &str = "/etc/default/grub.d/90-kbuild.cfg";

/// Returns the initramfs file the profile's tool writes for `release`.
pub fn initramfs_path(tool: InitramfsTool, release: &str) -> String {
    match tool {
        InitramfsTool::UpdateInitramfs => format!("/boot/initrd.img-{release}"),
        InitramfsTool::Mkinitcpio | InitramfsTool::Dracut | InitramfsTool::KernelInstall => {
            format!("/boot/initramfs-{release}.img")
        }
    }
}

/// Returns the script that copies the stage into /boot and /lib/modules,
/// runs depmod, makes the initramfs, checks it, makes GRUB boot the saved
/// entry, saves `fallback` as that entry, and regenerates grub.cfg. The
/// fallback is saved before the menu changes, so that a failure after this
/// point never leaves the new kernel as the default. It prints `cfg PATH`
/// with the path of grub.cfg last. Runs as root.
pub fn install_script(release: &str, stage: &str, boot: &BootSpec, fallback: &str) -> String {
    let initramfs = initramfs_path(boot.initramfs, release);
    [
        header(release, stage),
        COPY_KERNEL.to_string(),
        COPY_MODULES.to_string(),
        initramfs_commands(boot.initramfs),
        format!(
            "initramfs={}\n[ -s \"$initramfs\" ] || fail \"$initramfs is missing or empty after the \
             initramfs tool ran; see its output above\"\nreport \"initramfs $initramfs $(wc -c < \
             \"$initramfs\") bytes\"\n",
            shell_quote(&initramfs)
        ),
        PIN_DEFAULT.to_string(),
        format!(
            "if command -v grub-set-default >/dev/null 2>&1; then g=grub; else g=grub2; fi\n\
             \"$g-set-default\" {}\n",
            shell_quote(fallback)
        ),
        bootloader_commands(boot.bootloader).to_string(),
        "report \"cfg $cfg\"\n".to_string(),
    ]
    .concat()
}

/// Returns the script that sets the next boot, once, to `next`. Runs as root.
pub fn boot_once_script(next: &str) -> String {
    format!(
        "set -eu\n\
         if command -v grub-reboot >/dev/null 2>&1; then g=grub; else g=grub2; fi\n\
         \"$g-reboot\" {next}\n\
         \"$g-editenv\" list\n",
        next = shell_quote(next)
    )
}

/// Prints the current grub.cfg, wherever the distribution keeps it.
pub const READ_GRUB_CFG: &str =
    "for c in /boot/grub2/grub.cfg /boot/grub/grub.cfg; do [ -r \"$c\" ] && exec cat \"$c\"; done; exit 1";

/// Lists the Boot Loader Specification entries, for GRUB builds that read
/// them (Fedora); empty where the folder does not exist.
pub const LIST_BLS_ENTRIES: &str =
    "[ -d /boot/loader/entries ] || exit 0; ls -1 /boot/loader/entries";

fn header(release: &str, stage: &str) -> String {
    format!(
        "set -eu\n\
         release={release}\n\
         stage={stage}\n\
         fail() {{ echo \"{REPORT_PREFIX}error: $*\" >&2; exit 1; }}\n\
         report() {{ echo \"{REPORT_PREFIX}$*\"; }}\n\
         [ -s \"$stage/boot/vmlinuz\" ] || fail \"$stage/boot/vmlinuz is missing or empty\"\n\
         if {{ [ -e \"/boot/vmlinuz-$release\" ] || [ -d \"/lib/modules/$release\" ]; }} \
         && [ ! -e \"/lib/modules/$release/{MARKER}\" ]; then\n  \
           fail \"a kernel $release that kbuild did not install is in /boot or /lib/modules; give \
         the new kernel its own release with CONFIG_LOCALVERSION in a config fragment\"\n\
         fi\n\
         mkdir -p \"/lib/modules/$release\"\n\
         : > \"/lib/modules/$release/{MARKER}\"\n",
        release = shell_quote(release),
        stage = shell_quote(stage)
    )
}

/// Copies kernel, System.map and config, each through a temporary name.
const COPY_KERNEL: &str = r#"for part in vmlinuz System.map config; do
  [ -e "$stage/boot/$part" ] || continue
  install -m 0644 "$stage/boot/$part" "/boot/$part-$release.kbuild-new"
  mv -f "/boot/$part-$release.kbuild-new" "/boot/$part-$release"
done
report "kernel /boot/vmlinuz-$release"
"#;

/// Replaces the release's modules folder with the staged one and marks it.
const COPY_MODULES: &str = r#"new="/lib/modules/$release.kbuild-new"
rm -rf "$new"
mkdir -p "$new"
if [ -d "$stage/lib/modules/$release" ]; then
  cp -a "$stage/lib/modules/$release/." "$new/"
fi
rm -f "$new/build" "$new/source"
: > "$new/.kbuild-installed"
rm -rf "/lib/modules/$release"
mv "$new" "/lib/modules/$release"
if command -v depmod >/dev/null 2>&1; then depmod -a "$release"; fi
report "modules /lib/modules/$release ($(find "/lib/modules/$release" -name '*.ko*' | wc -l) modules)"
"#;

fn initramfs_commands(tool: InitramfsTool) -> String {
    match tool {
        InitramfsTool::UpdateInitramfs => {
            "rm -f \"/boot/initrd.img-$release\"\nupdate-initramfs -c -k \"$release\"\n".into()
        }
        InitramfsTool::Mkinitcpio => concat!(
            "preset=\"/etc/mkinitcpio.d/kbuild-$release.preset\"\n",
            "printf '%s\\n' \"ALL_kver='/boot/vmlinuz-$release'\" \"PRESETS=('default')\" ",
            "\"default_image='/boot/initramfs-$release.img'\" > \"$preset\"\n",
            "mkinitcpio -p \"kbuild-$release\"\n"
        )
        .into(),
        InitramfsTool::Dracut => {
            "dracut --force \"/boot/initramfs-$release.img\" \"$release\"\n".into()
        }
        InitramfsTool::KernelInstall => {
            "kernel-install add \"$release\" \"/boot/vmlinuz-$release\"\n".into()
        }
    }
}

/// Makes GRUB boot the saved entry, so that after a one-time boot of the new
/// kernel a reset brings back the kernel kbuild saved as default. Debian and
/// Ubuntu read drop-ins; elsewhere /etc/default/grub is edited once, with a
/// copy of the original kept beside it.
const PIN_DEFAULT: &str = r#"if [ -d /etc/default/grub.d ]; then
  printf '%s\n' '# Written by kbuild: boot the saved entry, so that a kernel that fails to boot' \
    '# falls back to the kernel kbuild saved as default.' 'GRUB_DEFAULT=saved' \
    > /etc/default/grub.d/90-kbuild.cfg
elif [ -f /etc/default/grub ] && ! grep -q '^GRUB_DEFAULT=saved' /etc/default/grub; then
  [ -e /etc/default/grub.kbuild-orig ] || cp -p /etc/default/grub /etc/default/grub.kbuild-orig
  if grep -q '^GRUB_DEFAULT=' /etc/default/grub; then
    sed -i 's/^GRUB_DEFAULT=.*/GRUB_DEFAULT=saved/' /etc/default/grub
  else
    echo 'GRUB_DEFAULT=saved' >> /etc/default/grub
  fi
fi
"#;

fn bootloader_commands(tool: BootloaderTool) -> &'static str {
    match tool {
        BootloaderTool::UpdateGrub => "cfg=/boot/grub/grub.cfg\nupdate-grub\n",
        BootloaderTool::GrubMkconfig => concat!(
            "if command -v grub2-mkconfig >/dev/null 2>&1; then\n",
            "  cfg=/boot/grub2/grub.cfg; grub2-mkconfig -o \"$cfg\"\n",
            "else\n",
            "  cfg=/boot/grub/grub.cfg; grub-mkconfig -o \"$cfg\"\n",
            "fi\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian() -> BootSpec {
        BootSpec {
            initramfs: InitramfsTool::UpdateInitramfs,
            bootloader: BootloaderTool::UpdateGrub,
        }
    }

    #[test]
    fn install_script_quotes_values() {
        let script = install_script("6.1.158-x", "/home/o'neil/kbuild/stage", &debian(), "f");
        assert!(
            script.contains("stage='/home/o'\\''neil/kbuild/stage'\n"),
            "{script}"
        );
    }

    #[test]
    fn install_script_runs_profile_tools() {
        let script = install_script("6.1.158", "/s", &debian(), "f");
        assert!(script.contains("update-initramfs -c -k \"$release\""));
        assert!(script.contains("update-grub\n"));
    }

    #[test]
    fn install_script_checks_initramfs() {
        let script = install_script("6.1.158", "/s", &debian(), "f");
        assert!(script.contains("initramfs=/boot/initrd.img-6.1.158\n[ -s \"$initramfs\" ]"));
    }

    #[test]
    fn install_script_is_valid_shell() {
        for initramfs in [
            InitramfsTool::UpdateInitramfs,
            InitramfsTool::Mkinitcpio,
            InitramfsTool::Dracut,
            InitramfsTool::KernelInstall,
        ] {
            for bootloader in [BootloaderTool::UpdateGrub, BootloaderTool::GrubMkconfig] {
                let boot = BootSpec {
                    initramfs,
                    bootloader,
                };
                let script = install_script("6.1.158", "/s", &boot, "f");
                let status = std::process::Command::new("sh")
                    .args(["-n", "-c", &script])
                    .status()
                    .unwrap();
                assert!(status.success(), "{initramfs:?} {bootloader:?}:\n{script}");
            }
        }
    }

    #[test]
    fn initramfs_path_per_tool() {
        assert_eq!(
            initramfs_path(InitramfsTool::Dracut, "6.1.158"),
            "/boot/initramfs-6.1.158.img"
        );
    }

    #[test]
    fn boot_once_script_quotes_entry() {
        let script = boot_once_script("x>y z");
        assert!(script.contains("\"$g-reboot\" 'x>y z'\n"), "{script}");
    }

    #[test]
    fn install_script_saves_fallback_before_menu() {
        let script = install_script("6.1.158", "/s", &debian(), "a>b c");
        let saved = script.find("\"$g-set-default\" 'a>b c'").unwrap();
        let menu = script.find("update-grub\n").unwrap();
        assert!(saved < menu, "{script}");
    }
}
