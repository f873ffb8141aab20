//! Per-architecture syscall registration: which files hold the syscall
//! table and how to add one entry to them.
//!
//! x86 keeps a `.tbl` file per ABI. arm64 and riscv in 6.x instead number
//! their syscalls in `include/uapi/asm-generic/unistd.h` (`#define __NR_x`,
//! `__SYSCALL(__NR_x, sys_x)` and `__NR_syscalls`), so a driver plans edits
//! on a set of files rather than producing one table line.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use super::files::{insert_after, FileSet};
use super::table::{format_like, strip_qualifier, Table};
use crate::exit::Failure;
use crate::project::Arch;

/// The syscall a driver is asked to register.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub name: &'a str,
    /// A fixed number; `None` takes the next free one.
    pub number: Option<u32>,
}

/// The number a driver chose and where the new prototype goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub number: u32,
    /// Entry point whose prototype in `include/linux/syscalls.h` the new
    /// prototype should follow: the table's last native syscall.
    pub neighbor: Option<String>,
}

/// Registers syscalls in one architecture's syscall table.
pub trait TableDriver {
    fn arch(&self) -> Arch;

    /// Files the driver reads and edits, relative to the tree.
    fn files(&self) -> Vec<PathBuf>;

    /// Plans the edits that register `request` in `files`, after checking
    /// that its name and number are free.
    fn register(&self, files: &mut FileSet, request: &Request) -> anyhow::Result<Registration>;

    /// Looks up the native-ABI number of the syscall `name` in `files`.
    fn lookup(&self, files: &FileSet, name: &str) -> anyhow::Result<Option<u32>>;
}

/// Returns the driver for `arch`.
pub fn for_arch(arch: Arch) -> &'static dyn TableDriver {
    match arch {
        Arch::X86_64 => &X86_64,
    }
}

/// The x86_64 table, `arch/x86/entry/syscalls/syscall_64.tbl`.
pub struct X86_64;

const X86_64_TABLE: &str = "arch/x86/entry/syscalls/syscall_64.tbl";

/// ABIs of the 64-bit table whose numbers a native x86_64 program calls.
const NATIVE_ABIS: &[&str] = &["common", "64"];

/// ABI of the x32 entries, whose numbers native syscalls must not reuse.
const X32_ABIS: &[&str] = &["x32"];

/// `__X32_SYSCALL_BIT`: numbers with this bit set are x32 syscalls.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Prefix of the entry points in 4.17 to about 5.8, where the table names
/// the `__x64_sys_*` wrappers; later tables name `sys_*`.
const X64_WRAPPER_PREFIX: &str = "__x64_";

impl TableDriver for X86_64 {
    fn arch(&self) -> Arch {
        Arch::X86_64
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![PathBuf::from(X86_64_TABLE)]
    }

    fn register(&self, files: &mut FileSet, request: &Request) -> anyhow::Result<Registration> {
        let path = Path::new(X86_64_TABLE);
        let origin = files.display(path);
        let text = files.text(path)?;
        let table = Table::parse(&origin, text)?;
        check_name_free(&table, &origin, request.name)?;

        let mut reserved = table.reserved.clone();
        reserved.extend(table.span(X32_ABIS));
        let number = match request.number {
            Some(number) => check_number_free(&table, &origin, &reserved, number)?,
            None => table.next_number(NATIVE_ABIS, &reserved).ok_or_else(|| {
                Failure::usage(format!(
                    "{origin}: no syscall number left after the last entry"
                ))
            })?,
        };

        let Some(model) = table.of_abis(NATIVE_ABIS).last() else {
            return Err(Failure::usage(format!(
                "{origin} has no common or 64 entry to place the new syscall after; \
                 point kernel.source at an unmodified kernel tree"
            )));
        };
        let model_line = text.lines().nth(model.line - 1).unwrap_or_default();
        let entry_point = format!("{}sys_{}", entry_point_prefix(&table), request.name);
        let number_text = number.to_string();
        let fields = [
            number_text.as_str(),
            "common",
            request.name,
            entry_point.as_str(),
        ];
        let new_text = insert_after(text, model.line, &format_like(model_line, &fields));

        let neighbor = model.entry_point.as_deref().map(|entry| {
            let symbol = strip_qualifier(entry);
            symbol
                .strip_prefix(X64_WRAPPER_PREFIX)
                .unwrap_or(symbol)
                .to_string()
        });
        files.set_text(path, new_text)?;
        Ok(Registration { number, neighbor })
    }

    fn lookup(&self, files: &FileSet, name: &str) -> anyhow::Result<Option<u32>> {
        let path = Path::new(X86_64_TABLE);
        let table = Table::parse(&files.display(path), files.text(path)?)?;
        let found = table.of_abis(NATIVE_ABIS).find(|entry| entry.name == name);
        Ok(found.map(|entry| entry.number))
    }
}

/// Returns `__x64_` if most native entry points name the `__x64_sys_*`
/// wrappers, else an empty prefix.
fn entry_point_prefix(table: &Table) -> &'static str {
    let wrapper = format!("{X64_WRAPPER_PREFIX}sys_");
    let (mut wrappers, mut plain) = (0, 0);
    for entry in table.of_abis(NATIVE_ABIS) {
        match entry.entry_point.as_deref() {
            Some(point) if point.starts_with(&wrapper) => wrappers += 1,
            Some(point) if point.starts_with("sys_") => plain += 1,
            _ => {}
        }
    }
    if wrappers > plain {
        X64_WRAPPER_PREFIX
    } else {
        ""
    }
}

/// Rejects a name that the table already has, in any ABI or as an entry point.
fn check_name_free(table: &Table, origin: &str, name: &str) -> anyhow::Result<()> {
    let fix = "choose another [syscall] name in kbuild.toml";
    if let Some(entry) = table.by_name(name) {
        return Err(Failure::usage(format!(
            "{origin}:{}: syscall {name} is already in the table as number {} (abi {}); {fix}",
            entry.line, entry.number, entry.abi
        )));
    }
    let symbols = [
        format!("sys_{name}"),
        format!("{X64_WRAPPER_PREFIX}sys_{name}"),
    ];
    for symbol in &symbols {
        if let Some(entry) = table.by_entry_point(symbol) {
            return Err(Failure::usage(format!(
                "{origin}:{}: entry point {symbol} already exists, for syscall {} \
                 number {}; {fix}",
                entry.line, entry.name, entry.number
            )));
        }
    }
    Ok(())
}

/// Checks a number requested in the project file.
fn check_number_free(
    table: &Table,
    origin: &str,
    reserved: &[RangeInclusive<u32>],
    number: u32,
) -> anyhow::Result<u32> {
    let next = table.next_number(NATIVE_ABIS, reserved);
    let fix = match next {
        Some(next) => format!(
            "remove `number` from [syscall] in kbuild.toml to take the next free one ({next})"
        ),
        None => "choose another `number` in [syscall] of kbuild.toml".to_string(),
    };
    if let Some(entry) = table.by_number(number) {
        return Err(Failure::usage(format!(
            "{origin}:{}: syscall number {number} is already used by {} (abi {}); {fix}",
            entry.line, entry.name, entry.abi
        )));
    }
    if let Some(range) = reserved.iter().find(|range| range.contains(&number)) {
        return Err(Failure::usage(format!(
            "syscall number {number} is inside the range {}-{} that {origin} reserves for \
             x32 syscalls; {fix}",
            range.start(),
            range.end()
        )));
    }
    if number >= X32_SYSCALL_BIT {
        return Err(Failure::usage(format!(
            "syscall number {number} has the x32 bit (0x40000000) set, so x86_64 would treat \
             it as an x32 syscall; {fix}"
        )));
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: &str = include_str!("../../tests/fixtures/tables/sys_gap_x32.tbl");
    const X64: &str = include_str!("../../tests/fixtures/tables/x64_sys.tbl");
    const NORETURN: &str = include_str!("../../tests/fixtures/tables/compat_noreturn.tbl");
    const NO_NEWLINE: &str = include_str!("../../tests/fixtures/tables/no_trailing_newline.tbl");

    fn files_with(table: &str) -> FileSet {
        let mut files = FileSet::new(Path::new("/tree"));
        files.insert(
            Path::new(X86_64_TABLE),
            Some(table.as_bytes().to_vec()),
            None,
        );
        files
    }

    fn register(table: &str, name: &str, number: Option<u32>) -> anyhow::Result<(u32, String)> {
        let mut files = files_with(table);
        let registration = X86_64.register(&mut files, &Request { name, number })?;
        let text = files.text(Path::new(X86_64_TABLE))?.to_string();
        Ok((registration.number, text))
    }

    fn error_of(table: &str, name: &str, number: Option<u32>) -> String {
        register(table, name, number).unwrap_err().to_string()
    }

    #[test]
    fn register_sys_style_after_last_common() {
        let (number, text) = register(GAP, "kbuild_add", None).unwrap();
        assert_eq!(number, 451);
        let expected = "sys_set_mempolicy_home_node\n451\tcommon\tkbuild_add\t\tsys_kbuild_add\n\n";
        assert!(text.contains(expected), "{text}");
    }

    #[test]
    fn register_x64_style_entry_point() {
        let (number, text) = register(X64, "kbuild_add", None).unwrap();
        assert_eq!(number, 440);
        let expected = "__x64_sys_faccessat2\n440\tcommon\tkbuild_add\t\t__x64_sys_kbuild_add\n";
        assert!(text.contains(expected), "{text}");
    }

    #[test]
    fn register_compat_style_has_four_fields() {
        let (number, text) = register(NORETURN, "kbuild_add", None).unwrap();
        assert_eq!(number, 463);
        assert!(
            text.contains("sys_mseal\n463\tcommon\tkbuild_add\t\tsys_kbuild_add\n"),
            "{text}"
        );
    }

    #[test]
    fn register_after_noreturn_line_drops_noreturn() {
        let table = "60\tcommon\texit\t\t\tsys_exit\t\t\t-\t\t\tnoreturn\n";
        let (_, text) = register(table, "kbuild_add", None).unwrap();
        assert!(
            text.ends_with("\n61\tcommon\tkbuild_add\t\tsys_kbuild_add\n"),
            "{text}"
        );
    }

    #[test]
    fn register_without_trailing_newline() {
        let (number, text) = register(NO_NEWLINE, "kbuild_add", None).unwrap();
        assert_eq!(number, 2);
        assert!(
            text.ends_with("sys_write\n2\tcommon\tkbuild_add\t\tsys_kbuild_add"),
            "{text}"
        );
    }

    #[test]
    fn register_keeps_requested_number() {
        let (number, text) = register(GAP, "kbuild_add", Some(600)).unwrap();
        assert_eq!(number, 600);
        assert!(text.contains("\n600\tcommon\tkbuild_add"), "{text}");
    }

    #[test]
    fn register_reports_neighbor_without_wrapper_prefix() {
        let mut files = files_with(X64);
        let request = Request {
            name: "kbuild_add",
            number: None,
        };
        let registration = X86_64.register(&mut files, &request).unwrap();
        assert_eq!(registration.neighbor.as_deref(), Some("sys_faccessat2"));
    }

    #[test]
    fn reject_number_in_use() {
        let error = error_of(GAP, "kbuild_add", Some(334));
        assert!(error.contains("syscall_64.tbl:9:"), "{error}");
        assert!(error.contains("already used by rseq"), "{error}");
        assert!(error.contains("next free one (451)"), "{error}");
    }

    #[test]
    fn reject_number_in_reserved_comment_range() {
        let error = error_of(GAP, "kbuild_add", Some(530));
        assert!(error.contains("range 512-547"), "{error}");
    }

    #[test]
    fn reject_number_in_x32_span_without_comment() {
        let error = error_of(X64, "kbuild_add", Some(520));
        assert!(error.contains("range 512-547"), "{error}");
    }

    #[test]
    fn reject_number_with_x32_bit() {
        let error = error_of(GAP, "kbuild_add", Some(X32_SYSCALL_BIT + 1));
        assert!(error.contains("x32 bit"), "{error}");
    }

    #[test]
    fn reject_name_of_x32_entry() {
        let error = error_of(GAP, "pwritev2", None);
        assert!(error.contains("syscall_64.tbl:21:"), "{error}");
        assert!(error.contains("already in the table"), "{error}");
    }

    #[test]
    fn reject_existing_entry_point() {
        let table = "0\tcommon\tnewstat\t\t\tsys_stat\n";
        let error = error_of(table, "stat", None);
        assert!(
            error.contains("entry point sys_stat already exists"),
            "{error}"
        );
    }

    #[test]
    fn reject_existing_x64_entry_point() {
        let table = "0\tcommon\tnewstat\t\t\t__x64_sys_stat\n";
        let error = error_of(table, "stat", None);
        assert!(error.contains("__x64_sys_stat already exists"), "{error}");
    }

    #[test]
    fn reject_unparsable_line_with_location() {
        let table = format!("{GAP}oops\n");
        let error = error_of(&table, "kbuild_add", None);
        assert!(error.contains("syscall_64.tbl:24:"), "{error}");
        assert!(error.contains("\"oops\""), "{error}");
    }

    #[test]
    fn lookup_finds_native_only() {
        let files = files_with(GAP);
        assert_eq!(X86_64.lookup(&files, "rseq").unwrap(), Some(334));
        assert_eq!(X86_64.lookup(&files, "pwritev2").unwrap(), None);
    }
}
