//! Reads GRUB's menu from `grub.cfg` to name the exact entry of one kernel
//! release, as `grub-reboot` and `grub-set-default` take it.

/// One `menuentry` of grub.cfg and the submenus it sits in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MenuEntry {
    pub title: String,
    /// The `$menuentry_id_option` value, when the entry has one.
    pub id: Option<String>,
    /// Enclosing submenus, outermost first, each as its id or else its title.
    pub parents: Vec<String>,
    /// The kernel path of the entry's `linux` line.
    pub kernel: Option<String>,
}

impl MenuEntry {
    /// Returns the entry as `grub-reboot` takes it: `submenu>entry`, by id
    /// where there is one and by title otherwise.
    pub fn path(&self) -> String {
        let own = self.id.clone().unwrap_or_else(|| self.title.clone());
        let mut parts = self.parents.clone();
        parts.push(own);
        parts.join(">")
    }

    /// True for the recovery-mode entries that Debian and Ubuntu add.
    pub fn is_recovery(&self) -> bool {
        self.title.contains("recovery mode")
            || self
                .id
                .as_deref()
                .is_some_and(|id| id.contains("-recovery-"))
    }

    /// True when the entry boots `/vmlinuz-<release>` or `/boot/vmlinuz-<release>`.
    pub fn boots(&self, release: &str) -> bool {
        let suffix = format!("/vmlinuz-{release}");
        self.kernel
            .as_deref()
            .is_some_and(|kernel| kernel.ends_with(&suffix))
    }
}

/// Lists the menu entries of `cfg` in file order.
pub fn menu_entries(cfg: &str) -> Vec<MenuEntry> {
    let mut entries = Vec::new();
    // One frame per open block: Some(name) for a submenu, or the index of the
    // menuentry in `entries`, or neither for if/function blocks.
    let mut stack: Vec<Block> = Vec::new();
    for line in cfg.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let words = split_words(line.trim());
        let Some(first) = words.first() else {
            continue;
        };
        let opens = line.trim_end().ends_with('{');
        match first.as_str() {
            "submenu" if opens => stack.push(Block::Submenu(menu_name(&words))),
            "menuentry" if opens => {
                entries.push(MenuEntry {
                    title: words.get(1).cloned().unwrap_or_default(),
                    id: option_value(&words),
                    parents: submenus(&stack),
                    kernel: None,
                });
                stack.push(Block::Entry(entries.len() - 1));
            }
            "linux" | "linux16" | "linuxefi" => {
                if let (Some(Block::Entry(index)), Some(kernel)) =
                    (current_entry(&stack), words.get(1))
                {
                    entries[index].kernel = Some(kernel.clone());
                }
            }
            "}" => {
                stack.pop();
            }
            _ if opens => stack.push(Block::Other),
            _ => {}
        }
    }
    entries
}

/// Finds the normal (not recovery) entry that boots `release`, preferring
/// one whose title names the release over a generic top-level entry that
/// boots whichever kernel is newest.
pub fn entry_for<'a>(entries: &'a [MenuEntry], release: &str) -> Option<&'a MenuEntry> {
    let mut matching = entries
        .iter()
        .filter(|entry| entry.boots(release) && !entry.is_recovery());
    let first = matching.clone().next();
    matching
        .find(|entry| entry.title.contains(release))
        .or(first)
}

/// Finds the entry to fall back to: the normal entry of `running` when it
/// is not `installed`, else the first normal entry of another kernel.
pub fn fallback_entry<'a>(
    entries: &'a [MenuEntry],
    running: &str,
    installed: &str,
) -> Option<&'a MenuEntry> {
    let other = |entry: &&MenuEntry| {
        entry.kernel.is_some() && !entry.boots(installed) && !entry.is_recovery()
    };
    if running != installed {
        if let Some(entry) = entry_for(entries, running) {
            return Some(entry);
        }
    }
    entries.iter().find(other)
}

/// Finds the Boot Loader Specification entry of `release` in a listing of
/// `/boot/loader/entries`, one file name a line, as Fedora's GRUB reads
/// them. Returns its id, which is the file name without `.conf`.
pub fn bls_entry_id(listing: &str, release: &str) -> Option<String> {
    let suffix = format!("-{release}.conf");
    listing
        .lines()
        .map(str::trim)
        .find(|name| name.ends_with(&suffix) && !name.contains("rescue"))
        .map(|name| name.trim_end_matches(".conf").to_string())
}

#[derive(Debug, Clone)]
enum Block {
    Submenu(String),
    Entry(usize),
    Other,
}

fn submenus(stack: &[Block]) -> Vec<String> {
    stack
        .iter()
        .filter_map(|block| match block {
            Block::Submenu(name) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn current_entry(stack: &[Block]) -> Option<Block> {
    stack
        .iter()
        .rev()
        .find(|block| matches!(block, Block::Entry(_)))
        .cloned()
}

/// Returns a submenu's id, or else its title.
fn menu_name(words: &[String]) -> String {
    option_value(words).unwrap_or_else(|| words.get(1).cloned().unwrap_or_default())
}

/// Returns the word after `$menuentry_id_option` or `--id`.
fn option_value(words: &[String]) -> Option<String> {
    words
        .iter()
        .position(|word| word == "$menuentry_id_option" || word == "--id")
        .and_then(|index| words.get(index + 1))
        .cloned()
}

/// Splits a grub.cfg line into words the way GRUB's shell does for the
/// parts this module reads: quotes group words and are removed.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => word.extend(chars.next()),
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                word.extend(chars.next());
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = r#"
function gfxmode {
	set gfxpayload="${1}"
}
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class os $menuentry_id_option 'gnulinux-simple-5f2c' {
	load_video
	if [ x$feature_platform_search_hint = xy ]; then
	  search --no-floppy --fs-uuid --set=root 5f2c
	fi
	linux	/boot/vmlinuz-6.1.158 root=UUID=5f2c ro console=ttyS0,115200
	initrd	/boot/initrd.img-6.1.158
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-5f2c' {
	menuentry 'Debian GNU/Linux, with Linux 6.1.158' --class debian $menuentry_id_option 'gnulinux-6.1.158-advanced-5f2c' {
		linux	/boot/vmlinuz-6.1.158 root=UUID=5f2c ro console=ttyS0,115200
	}
	menuentry 'Debian GNU/Linux, with Linux 6.1.158 (recovery mode)' --class debian $menuentry_id_option 'gnulinux-6.1.158-recovery-5f2c' {
		linux	/boot/vmlinuz-6.1.158 root=UUID=5f2c ro single console=ttyS0,115200
	}
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-50-amd64' --class debian $menuentry_id_option 'gnulinux-6.1.0-50-amd64-advanced-5f2c' {
		if [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi
		linux	/boot/vmlinuz-6.1.0-50-amd64 root=UUID=5f2c ro console=ttyS0,115200
	}
}
"#;

    #[test]
    fn entries_of_debian_menu() {
        let entries = menu_entries(DEBIAN);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[1].parents, ["gnulinux-advanced-5f2c"]);
    }

    #[test]
    fn entry_for_release_is_named_entry() {
        let entries = menu_entries(DEBIAN);
        let entry = entry_for(&entries, "6.1.158").unwrap();
        assert_eq!(
            entry.path(),
            "gnulinux-advanced-5f2c>gnulinux-6.1.158-advanced-5f2c"
        );
    }

    #[test]
    fn entry_for_old_release_is_in_submenu() {
        let entries = menu_entries(DEBIAN);
        let entry = entry_for(&entries, "6.1.0-50-amd64").unwrap();
        assert_eq!(
            entry.path(),
            "gnulinux-advanced-5f2c>gnulinux-6.1.0-50-amd64-advanced-5f2c"
        );
    }

    #[test]
    fn entry_for_release_prefix_does_not_match() {
        let entries = menu_entries(DEBIAN);
        assert_eq!(entry_for(&entries, "6.1.15"), None);
    }

    #[test]
    fn fallback_is_running_kernel() {
        let entries = menu_entries(DEBIAN);
        let entry = fallback_entry(&entries, "6.1.0-50-amd64", "6.1.158").unwrap();
        assert!(entry.boots("6.1.0-50-amd64"));
    }

    #[test]
    fn fallback_when_installed_runs_is_other_kernel() {
        let entries = menu_entries(DEBIAN);
        let entry = fallback_entry(&entries, "6.1.158", "6.1.158").unwrap();
        assert!(entry.boots("6.1.0-50-amd64"));
    }

    #[test]
    fn comment_with_brace_opens_no_block() {
        let cfg = "submenu 'A' --id sub {\n# note {\n menuentry 'X' --id x {\n linux /vmlinuz-1\n }\n}\nmenuentry 'Y' --id y {\n linux /vmlinuz-2\n}\n";
        let entries = menu_entries(cfg);
        assert_eq!(entries[1].path(), "y");
    }

    #[test]
    fn entries_without_ids_use_titles() {
        let cfg = "submenu \"Advanced\" {\n menuentry \"Arch, linux-6.1\" {\n linux /vmlinuz-6.1.158 rw\n }\n}\n";
        let entries = menu_entries(cfg);
        assert_eq!(entries[0].path(), "Advanced>Arch, linux-6.1");
    }

    #[test]
    fn split_words_handles_quotes_and_escapes() {
        let words = split_words(r#"menuentry 'it'\''s' "a \"b\"" c\ d"#);
        assert_eq!(words, ["menuentry", "it's", "a \"b\"", "c d"]);
    }

    #[test]
    fn bls_entry_of_release() {
        let listing = "abc-6.11.4-301.fc41.x86_64.conf\nabc-0-rescue.conf\nabc-6.1.158.conf\n";
        assert_eq!(
            bls_entry_id(listing, "6.1.158").as_deref(),
            Some("abc-6.1.158")
        );
    }
}
