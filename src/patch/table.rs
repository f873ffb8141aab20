//! The `.tbl` syscall table format that x86, arm (32-bit), powerpc, s390,
//! mips and other architectures use in Linux 6.1: one `<number> <abi>
//! <name> [<entry point> [<compat entry point> [noreturn]]]` line per
//! syscall, `#` comments and blank lines.

use std::ops::RangeInclusive;

use crate::exit::Failure;

/// Width of a tab stop, for copying a line's column layout.
const TAB_WIDTH: usize = 8;

/// One syscall line of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Line number in the file, counting from 1.
    pub line: usize,
    pub number: u32,
    pub abi: String,
    pub name: String,
    pub entry_point: Option<String>,
    /// Compat entry point; `None` where the column is absent or `-`.
    pub compat_entry_point: Option<String>,
    pub noreturn: bool,
}

/// A parsed syscall table.
#[derive(Debug, Clone)]
pub struct Table {
    pub entries: Vec<Entry>,
    /// Number ranges that the table's comments reserve, such as "numbers 512-547".
    pub reserved: Vec<RangeInclusive<u32>>,
}

impl Table {
    /// Parses a table; `origin` names the file in error messages.
    pub fn parse(origin: &str, text: &str) -> anyhow::Result<Table> {
        let mut entries = Vec::new();
        let mut reserved = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if let Some(comment) = trimmed.strip_prefix('#') {
                reserved.extend(reserved_ranges(comment));
            } else if !trimmed.is_empty() {
                entries.push(parse_entry(origin, index + 1, line)?);
            }
        }
        Ok(Table { entries, reserved })
    }

    /// Finds the entry named `name`, in any ABI.
    pub fn by_name(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.name == name)
    }

    /// Finds the entry numbered `number`, in any ABI.
    pub fn by_number(&self, number: u32) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.number == number)
    }

    /// Finds an entry whose entry point or compat entry point is `symbol`,
    /// ignoring a qualifier such as the `/ptregs` of 4.17 tables.
    pub fn by_entry_point(&self, symbol: &str) -> Option<&Entry> {
        let matches =
            |field: &Option<String>| field.as_deref().map(strip_qualifier) == Some(symbol);
        self.entries
            .iter()
            .find(|entry| matches(&entry.entry_point) || matches(&entry.compat_entry_point))
    }

    /// Iterates over the entries of the given ABIs, in file order.
    pub fn of_abis<'a>(&'a self, abis: &'a [&str]) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .filter(move |entry| abis.contains(&entry.abi.as_str()))
    }

    /// Returns the lowest and highest number used by the given ABIs.
    pub fn span(&self, abis: &[&str]) -> Option<RangeInclusive<u32>> {
        let low = self.of_abis(abis).map(|entry| entry.number).min()?;
        let high = self.of_abis(abis).map(|entry| entry.number).max()?;
        Some(low..=high)
    }

    /// Picks the number after the highest one of the given ABIs, skipping
    /// `reserved` ranges. Gaps below the highest number stay unused, because
    /// the kernel never hands out a number twice.
    pub fn next_number(&self, abis: &[&str], reserved: &[RangeInclusive<u32>]) -> Option<u32> {
        let mut candidate = match self.of_abis(abis).map(|entry| entry.number).max() {
            Some(highest) => highest.checked_add(1)?,
            None => 0,
        };
        while let Some(range) = reserved.iter().find(|range| range.contains(&candidate)) {
            candidate = range.end().checked_add(1)?;
        }
        Some(candidate)
    }
}

/// Strips a `/qualifier` suffix from an entry point.
pub fn strip_qualifier(entry_point: &str) -> &str {
    entry_point.split('/').next().unwrap_or(entry_point)
}

/// Parses one non-comment line, or explains what it should look like.
fn parse_entry(origin: &str, line: usize, text: &str) -> anyhow::Result<Entry> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let reject = |problem: &str| {
        Failure::usage(format!(
            "{origin}:{line}: cannot parse syscall table line ({problem}): {text:?}; expected \
             `<number> <abi> <name> [<entry point> [<compat entry point> [noreturn]]]`, \
             so fix or remove that line"
        ))
    };
    if fields.len() < 3 {
        return Err(reject("fewer than 3 fields"));
    }
    if fields.len() > 6 {
        return Err(reject("more than 6 fields"));
    }
    let number = fields[0]
        .parse::<u32>()
        .map_err(|_| reject("the number is not a number"))?;
    let noreturn = match fields.get(5) {
        None => false,
        Some(&"noreturn") => true,
        Some(_) => return Err(reject("the 6th field is not `noreturn`")),
    };
    Ok(Entry {
        line,
        number,
        abi: fields[1].to_string(),
        name: fields[2].to_string(),
        entry_point: fields.get(3).map(|field| field.to_string()),
        compat_entry_point: fields
            .get(4)
            .filter(|field| **field != "-")
            .map(|f| f.to_string()),
        noreturn,
    })
}

/// Finds ranges written as "numbers 512-547" in a comment.
fn reserved_ranges(comment: &str) -> Vec<RangeInclusive<u32>> {
    let lower = comment.to_ascii_lowercase();
    let mut ranges = Vec::new();
    for (start, _) in lower.match_indices("numbers") {
        let rest = lower[start + "numbers".len()..].trim_start();
        let Some((low, rest)) = split_number(rest) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix('-') else {
            continue;
        };
        let Some((high, _)) = split_number(rest) else {
            continue;
        };
        if low <= high {
            ranges.push(low..=high);
        }
    }
    ranges
}

/// Splits a leading decimal number off `text`.
fn split_number(text: &str) -> Option<(u32, &str)> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number = text[..digits].parse().ok()?;
    Some((number, &text[digits..]))
}

/// Joins `fields` so that each starts at the column where the same field
/// starts in `model`, using tabs if `model` separates its fields with tabs.
pub fn format_like(model: &str, fields: &[&str]) -> String {
    let indent_len = model.len() - model.trim_start().len();
    let mut line = model[..indent_len].to_string();
    let columns = field_columns(model);
    let separator = if model.trim().contains('\t') {
        '\t'
    } else {
        ' '
    };
    let mut column = display_width(&line);
    for (index, field) in fields.iter().enumerate() {
        if index > 0 {
            let target = columns.get(index).copied().unwrap_or(0);
            loop {
                line.push(separator);
                column = advance(column, separator);
                if column >= target {
                    break;
                }
            }
        }
        line.push_str(field);
        column += field.chars().count();
    }
    line
}

/// Returns the display column where each field of `line` starts.
fn field_columns(line: &str) -> Vec<usize> {
    let mut columns = Vec::new();
    let mut column = 0;
    let mut in_field = false;
    for c in line.chars() {
        let blank = c == ' ' || c == '\t';
        if !blank && !in_field {
            columns.push(column);
        }
        in_field = !blank;
        column = advance(column, c);
    }
    columns
}

fn display_width(text: &str) -> usize {
    text.chars().fold(0, advance)
}

fn advance(column: usize, c: char) -> usize {
    if c == '\t' {
        (column / TAB_WIDTH + 1) * TAB_WIDTH
    } else {
        column + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: &str = include_str!("../../tests/fixtures/tables/sys_gap_x32.tbl");
    const X64: &str = include_str!("../../tests/fixtures/tables/x64_sys.tbl");
    const NORETURN: &str = include_str!("../../tests/fixtures/tables/compat_noreturn.tbl");
    const NATIVE: &[&str] = &["common", "64"];

    #[test]
    fn parse_counts_entries() {
        let table = Table::parse("t.tbl", GAP).unwrap();
        assert_eq!(table.entries.len(), 9);
    }

    #[test]
    fn parse_reads_fields() {
        let table = Table::parse("t.tbl", GAP).unwrap();
        let entry = table.by_name("write").unwrap();
        assert_eq!(entry.number, 1);
        assert_eq!(entry.abi, "common");
        assert_eq!(entry.entry_point.as_deref(), Some("sys_write"));
        assert_eq!(entry.line, 7);
    }

    #[test]
    fn parse_reads_reserved_comment() {
        let table = Table::parse("t.tbl", GAP).unwrap();
        assert_eq!(table.reserved, vec![512..=547]);
    }

    #[test]
    fn parse_ignores_open_ended_numbers() {
        assert!(reserved_ranges(" Numbers 548 and above are available").is_empty());
    }

    #[test]
    fn parse_reads_compat_and_noreturn() {
        let table = Table::parse("t.tbl", NORETURN).unwrap();
        let exit = table.by_name("exit").unwrap();
        assert!(exit.noreturn);
        assert_eq!(exit.compat_entry_point, None);
        let readv = table.by_name("readv").unwrap();
        assert_eq!(
            readv.compat_entry_point.as_deref(),
            Some("compat_sys_readv")
        );
        assert!(!readv.noreturn);
    }

    #[test]
    fn parse_reads_x64_entry_points() {
        let table = Table::parse("t.tbl", X64).unwrap();
        assert!(table.by_entry_point("__x64_sys_read").is_some());
    }

    #[test]
    fn entry_point_ignores_ptregs_qualifier() {
        let table = Table::parse("t.tbl", X64).unwrap();
        assert_eq!(
            table.by_entry_point("__x64_sys_clone").map(|e| e.number),
            Some(56)
        );
    }

    #[test]
    fn parse_rejects_bad_number_with_line() {
        let error = Table::parse("t.tbl", "0\tcommon\tread\tsys_read\nx1\tcommon\twrite\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("t.tbl:2:"), "{error}");
        assert!(error.contains("x1\\tcommon\\twrite"), "{error}");
    }

    #[test]
    fn parse_rejects_short_line() {
        let error = Table::parse("t.tbl", "0 common\n").unwrap_err().to_string();
        assert!(error.contains("fewer than 3 fields"), "{error}");
    }

    #[test]
    fn parse_rejects_unknown_sixth_field() {
        let error = Table::parse("t.tbl", "60 common exit sys_exit - maybe\n").unwrap_err();
        assert!(error.to_string().contains("noreturn"), "{error}");
    }

    #[test]
    fn next_number_skips_gap_and_x32() {
        let table = Table::parse("t.tbl", GAP).unwrap();
        assert_eq!(table.next_number(NATIVE, &table.reserved), Some(451));
    }

    #[test]
    fn next_number_jumps_reserved_range() {
        let table = Table::parse("t.tbl", "511 common last sys_last\n").unwrap();
        assert_eq!(table.next_number(NATIVE, &[512..=547]), Some(548));
    }

    #[test]
    fn next_number_of_empty_table() {
        let table = Table::parse("t.tbl", "# nothing yet\n").unwrap();
        assert_eq!(table.next_number(NATIVE, &[]), Some(0));
    }

    #[test]
    fn span_covers_x32_entries() {
        let table = Table::parse("t.tbl", GAP).unwrap();
        assert_eq!(table.span(&["x32"]), Some(512..=547));
    }

    #[test]
    fn format_like_copies_tab_columns() {
        let model = "450\tcommon\tset_mempolicy_home_node\tsys_set_mempolicy_home_node";
        let line = format_like(model, &["451", "common", "kbuild_add", "sys_kbuild_add"]);
        assert_eq!(line, "451\tcommon\tkbuild_add\t\tsys_kbuild_add");
    }

    #[test]
    fn format_like_keeps_one_tab_for_long_name() {
        let model = "1\tcommon\twrite\t\t\tsys_write";
        let name = "a_name_longer_than_the_column";
        let line = format_like(model, &["2", "common", name, "sys_x"]);
        assert_eq!(line, format!("2\tcommon\t{name}\tsys_x"));
    }

    #[test]
    fn format_like_copies_space_columns() {
        let line = format_like(
            "1  common  write   sys_write",
            &["2", "common", "ab", "sys_ab"],
        );
        assert_eq!(line, "2  common  ab      sys_ab");
    }
}
