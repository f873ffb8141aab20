//! Templates shipped in `templates/`, built into the binary, and the
//! `{{placeholder}}` renderer they use.

use std::path::Path;

use anyhow::Context;

use crate::exit::Failure;
use crate::project::TemplateRef;

/// Syscall body templates by name.
pub const SYSCALL_BODIES: &[(&str, &str)] = &[
    ("sum", include_str!("../templates/syscall/sum.c")),
    ("hello", include_str!("../templates/syscall/hello.c")),
];

/// Kconfig fragments by name.
pub const KCONFIG_FRAGMENTS: &[(&str, &str)] = &[
    ("boot", include_str!("../templates/kconfig/boot.config")),
    ("vm", include_str!("../templates/kconfig/vm.config")),
];

/// The test program that calls the syscall and prints its result.
pub const TEST_PROGRAM: &str = include_str!("../templates/test/syscall_test.c");

/// Reads a template's text, from the built-in set or from the user's file.
pub fn load(reference: &TemplateRef, builtins: &[(&str, &str)]) -> anyhow::Result<String> {
    match reference {
        TemplateRef::Builtin(name) => builtins
            .iter()
            .find(|(builtin, _)| builtin == name)
            .map(|(_, text)| text.to_string())
            .ok_or_else(|| Failure::usage(format!("unknown built-in template {name:?}"))),
        TemplateRef::File(path) => read(path),
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading template {}", path.display()))
}

/// A short name for a template, for messages and fingerprints.
pub fn describe(reference: &TemplateRef) -> String {
    match reference {
        TemplateRef::Builtin(name) => name.clone(),
        TemplateRef::File(path) => path.display().to_string(),
    }
}

/// Replaces each `{{key}}` in `text` with its value.
///
/// A placeholder with no value is an error that names it and `origin`, so a
/// user's template that uses `{{arg2}}` of a one-argument syscall fails
/// before anything is written.
pub fn render(origin: &str, text: &str, values: &[(&str, String)]) -> anyhow::Result<String> {
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        output.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            Failure::usage(format!(
                "template {origin}: `{{{{` without a closing `}}}}`"
            ))
        })?;
        let key = after[..end].trim();
        let value = values
            .iter()
            .find(|(name, _)| *name == key)
            .ok_or_else(|| {
                let known: Vec<&str> = values.iter().map(|(name, _)| *name).collect();
                Failure::usage(format!(
                    "template {origin} uses {{{{{key}}}}}, which has no value here; \
                 available: {}",
                    known.join(", ")
                ))
            })?;
        output.push_str(&value.1);
        rest = &after[end + 2..];
    }
    output.push_str(rest);
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_replaces_placeholders() {
        let text = render(
            "t",
            "a {{x}} b {{ y }}",
            &[("x", "1".into()), ("y", "2".into())],
        );
        assert_eq!(text.unwrap(), "a 1 b 2");
    }

    #[test]
    fn render_names_missing_placeholder() {
        let error = render("sum", "{{arg2}}", &[("arg1", "a".into())]).unwrap_err();
        assert!(error.to_string().contains("{{arg2}}"), "{error}");
        assert!(error.to_string().contains("arg1"), "{error}");
    }

    #[test]
    fn render_rejects_unclosed_placeholder() {
        assert!(render("t", "{{x", &[("x", "1".into())]).is_err());
    }
}
