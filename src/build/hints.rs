//! Turns a failed make's output into an error message: the first error lines
//! and one hint for each known cause.
//!
//! Make runs with `LC_ALL=C`, so gcc and ld quote names as `name' in ASCII.
//! The matchers also accept the Unicode quotes of a UTF-8 locale.

use std::path::Path;

/// Maximum number of error lines copied into the message.
const MAX_ERROR_LINES: usize = 12;

/// Markers of a line worth showing: compiler and linker errors, make's `***`
/// lines, and a shell's report of a missing program.
const ERROR_MARKERS: &[&str] = &[
    "error:",
    "Error ",
    "*** ",
    "undefined reference",
    ": not found",
    "command not found",
];

/// Builds the message of a failed make run: what failed, the first error
/// lines of `output`, a hint per known cause, and the log path.
pub fn failure_message(what: &str, status: &str, output: &str, log: &Path) -> String {
    let mut message = format!("{what} failed ({status})");
    let errors = first_errors(output);
    if !errors.is_empty() {
        message.push_str("; first errors:");
        for line in errors {
            message.push_str("\n  ");
            message.push_str(&line);
        }
    }
    for hint in hints(output) {
        message.push_str("\nhint: ");
        message.push_str(&hint);
    }
    message.push_str(&format!("\nfull log: {}", log.display()));
    message
}

/// Returns up to [`MAX_ERROR_LINES`] distinct error lines, in output order.
pub fn first_errors(output: &str) -> Vec<String> {
    let mut errors: Vec<String> = Vec::new();
    for line in output.lines() {
        let line = line.trim_end();
        let is_error = ERROR_MARKERS.iter().any(|marker| line.contains(marker))
            && !line.ends_with("Waiting for unfinished jobs....");
        if is_error && !errors.iter().any(|known| known == line) {
            errors.push(line.to_string());
            if errors.len() == MAX_ERROR_LINES {
                break;
            }
        }
    }
    errors
}

/// Missing host tools and the Debian package of each.
const TOOL_PACKAGES: &[(&str, &str)] = &[
    ("bc", "bc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("pahole", "dwarves"),
];

/// Causes found by a substring of the output: the substrings and the hint.
const CAUSES: &[(&[&str], &str)] = &[
    (
        &["gelf.h: No such file", "libelf.h: No such file"],
        "libelf headers are missing; run `apt-get install libelf-dev`",
    ),
    (
        &["fatal error: openssl/"],
        "OpenSSL headers are missing; run `apt-get install libssl-dev`",
    ),
    (
        &[
            "Killed signal terminated program",
            "internal compiler error: Killed",
        ],
        "the compiler was killed, most likely out of memory; lower the job count with \
         --jobs or [build] jobs",
    ),
    (
        &["The source tree is not clean"],
        "the kernel tree was configured or built in place, which blocks builds in a separate \
         folder; run `make mrproper` in the tree or use a clean copy",
    ),
    (
        &["No space left on device"],
        "the disk is full; free space under the build folder and retry",
    ),
];

/// Returns one hint for each known cause of failure found in `output`.
pub fn hints(output: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for (tool, package) in TOOL_PACKAGES {
        if tool_missing(output, tool) {
            found.push(format!(
                "`{tool}` is not installed; install it with `apt-get install {package}`"
            ));
        }
    }
    for (markers, hint) in CAUSES {
        if markers.iter().any(|marker| output.contains(marker)) {
            found.push(hint.to_string());
        }
    }
    if let Some(file) = missing_cert_target(output) {
        found.push(format!(
            "the config names certificate file {file}, which this tree lacks; set \
             CONFIG_SYSTEM_TRUSTED_KEYS=\"\" and CONFIG_SYSTEM_REVOCATION_KEYS=\"\" in the config"
        ));
    }
    for name in undefined_syscalls(output) {
        found.push(format!(
            "sys_{name} is undefined: the name in the syscall table and in \
             SYSCALL_DEFINE differ, or kernel/{name}.o was not built (check kernel/Makefile)"
        ));
    }
    found
}

/// True when a shell or kbuild reported `tool` missing.
fn tool_missing(output: &str, tool: &str) -> bool {
    output.lines().any(|line| {
        let line = line.trim_end();
        line.ends_with(&format!(" {tool}: not found"))
            || line.ends_with(&format!(" {tool}: command not found"))
            || (line.contains(&format!(" {tool} (")) && line.ends_with("is not available"))
    })
}

/// Finds `No rule to make target 'X'` where X looks like a certificate file.
fn missing_cert_target(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let rest = line.split("No rule to make target ").nth(1)?;
        let target = quoted(rest)?;
        let is_cert = target.contains("certs/") || target.ends_with(".pem");
        is_cert.then(|| target.to_string())
    })
}

/// Lists syscall names from `undefined reference to `__x64_sys_NAME'` lines,
/// without repeats.
fn undefined_syscalls(output: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in output.lines() {
        let Some(rest) = line.split("undefined reference to ").nth(1) else {
            continue;
        };
        let Some(symbol) = quoted(rest) else {
            continue;
        };
        let name = [
            "__x64_sys_",
            "__ia32_sys_",
            "__se_sys_",
            "__do_sys_",
            "sys_",
        ]
        .iter()
        .find_map(|prefix| symbol.strip_prefix(prefix));
        if let Some(name) = name {
            if !names.iter().any(|known| known == name) {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// Returns the text between the opening quote at the start of `text` and the
/// next closing quote, for the quote styles of gcc, ld and make.
fn quoted(text: &str) -> Option<&str> {
    let is_quote = |c: char| matches!(c, '`' | '\'' | '"' | '\u{2018}' | '\u{2019}');
    let inner = text.strip_prefix(is_quote)?;
    let end = inner.find(is_quote)?;
    Some(&inner[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only_hint(output: &str) -> String {
        let found = hints(output);
        assert_eq!(found.len(), 1, "{found:?}");
        found[0].clone()
    }

    #[test]
    fn hints_bc_missing() {
        let log = "  GEN     include/generated/timeconst.h\n/bin/sh: 1: bc: not found\n\
                   make[2]: *** [/src/Kbuild:24: include/generated/timeconst.h] Error 127\n";
        assert!(only_hint(log).contains("apt-get install bc"));
    }

    #[test]
    fn hints_flex_missing() {
        let log = "  LEX     scripts/kconfig/lexer.lex.c\n/bin/sh: 1: flex: not found\n\
                   make[2]: *** [scripts/Makefile.host:9: scripts/kconfig/lexer.lex.c] Error 127\n";
        assert!(only_hint(log).contains("apt-get install flex"));
    }

    #[test]
    fn hints_bison_missing() {
        let log = "  YACC    scripts/kconfig/parser.tab.c\n/bin/sh: bison: command not found\n";
        assert!(only_hint(log).contains("apt-get install bison"));
    }

    #[test]
    fn hints_pahole_missing() {
        let log = "  LD      .tmp_vmlinux.btf\n\
                   BTF: .tmp_vmlinux.btf: pahole (pahole) is not available\n\
                   Failed to generate BTF for vmlinux\n";
        assert!(only_hint(log).contains("apt-get install dwarves"));
    }

    #[test]
    fn hints_gelf_missing() {
        let log = "In file included from check.c:15:\n\
                   tools/objtool/include/objtool/elf.h:10:10: fatal error: gelf.h: \
                   No such file or directory\ncompilation terminated.\n";
        assert!(only_hint(log).contains("libelf-dev"));
    }

    #[test]
    fn hints_openssl_missing() {
        let log = "  HOSTCC  scripts/sign-file\nscripts/sign-file.c:25:10: fatal error: \
                   openssl/opensslv.h: No such file or directory\n";
        assert!(only_hint(log).contains("libssl-dev"));
    }

    #[test]
    fn hints_cert_missing() {
        let log = "make[3]: *** No rule to make target 'debian/certs/debian-uefi-certs.pem', \
                   needed by 'certs/x509_certificate_list'.  Stop.\n";
        let hint = only_hint(log);
        assert!(
            hint.contains("debian/certs/debian-uefi-certs.pem"),
            "{hint}"
        );
        assert!(hint.contains("CONFIG_SYSTEM_TRUSTED_KEYS=\"\""), "{hint}");
    }

    #[test]
    fn hints_other_missing_target_ignored() {
        let log = "make[1]: *** No rule to make target 'kernel/foo.o', needed by 'x'.  Stop.\n";
        assert!(hints(log).is_empty());
    }

    #[test]
    fn hints_compiler_killed() {
        let log = "  CC      fs/namei.o\ngcc: fatal error: Killed signal terminated program cc1\n\
                   compilation terminated.\n";
        assert!(only_hint(log).contains("out of memory"));
    }

    #[test]
    fn hints_internal_compiler_error_killed() {
        let log = "kernel/sched/core.c:1: internal compiler error: Killed (program cc1)\n";
        assert!(only_hint(log).contains("lower the job count"));
    }

    #[test]
    fn hints_tree_not_clean() {
        let log = "*** The source tree is not clean, please run 'make ARCH=x86_64 mrproper'\n\
                   *** in /src/linux\n***\n";
        assert!(only_hint(log).contains("make mrproper"));
    }

    #[test]
    fn hints_disk_full() {
        let log = "/usr/bin/ld: final link failed: No space left on device\n";
        assert!(only_hint(log).contains("disk is full"));
    }

    #[test]
    fn hints_undefined_syscall_x64() {
        let log = "ld: arch/x86/entry/syscall_64.o:(.rodata+0x1c0): undefined reference to \
                   `__x64_sys_kbuild_add'\n";
        let hint = only_hint(log);
        assert!(hint.contains("sys_kbuild_add is undefined"), "{hint}");
        assert!(hint.contains("kernel/kbuild_add.o"), "{hint}");
    }

    #[test]
    fn hints_undefined_syscall_unicode_quotes() {
        let log = "ld: x.o: undefined reference to \u{2018}sys_hello\u{2019}\n";
        assert!(only_hint(log).contains("sys_hello"));
    }

    #[test]
    fn hints_undefined_other_symbol_ignored() {
        let log = "ld: x.o: undefined reference to `memcpy_fancy'\n";
        assert!(hints(log).is_empty());
    }

    #[test]
    fn hints_clean_log_has_none() {
        let log = "  CC      kernel/fork.o\n  LD      vmlinux\nKernel: bzImage is ready\n";
        assert!(hints(log).is_empty());
    }

    #[test]
    fn first_errors_deduplicated() {
        let log = "a.c:1: error: x\na.c:1: error: x\nmake: *** [a] Error 1\n  CC b.o\n\
                   make[1]: *** Waiting for unfinished jobs....\n";
        assert_eq!(
            first_errors(log),
            ["a.c:1: error: x", "make: *** [a] Error 1"]
        );
    }

    #[test]
    fn first_errors_capped() {
        let log: String = (0..30).map(|i| format!("f.c:{i}: error: e{i}\n")).collect();
        assert_eq!(first_errors(&log).len(), MAX_ERROR_LINES);
    }

    #[test]
    fn failure_message_has_log_path() {
        let message = failure_message("make", "exit status: 2", "", Path::new("/l/b.log"));
        assert!(message.ends_with("full log: /l/b.log"), "{message}");
    }
}
