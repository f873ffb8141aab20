//! The architecture-independent edits: the syscall's body in
//! `kernel/<name>.c`, its object in `kernel/Makefile` and its prototype in
//! `include/linux/syscalls.h`.

use std::path::{Path, PathBuf};

use super::files::{insert_after, FileSet};
use crate::exit::Failure;
use crate::project::{Project, SyscallArg};

pub const MAKEFILE: &str = "kernel/Makefile";
pub const SYSCALLS_H: &str = "include/linux/syscalls.h";

/// Returns the path of the syscall's source file, relative to the tree.
pub fn body_path(name: &str) -> PathBuf {
    PathBuf::from(format!("kernel/{name}.c"))
}

/// Returns every file this module edits, relative to the tree.
pub fn paths(name: &str) -> Vec<PathBuf> {
    vec![
        PathBuf::from(MAKEFILE),
        PathBuf::from(SYSCALLS_H),
        body_path(name),
    ]
}

/// Renders the project's body template into `kernel/<name>.c`.
pub fn add_body(files: &mut FileSet, project: &Project, number: u32) -> anyhow::Result<()> {
    let spec = &project.syscall;
    let template = crate::template::load(&spec.template, crate::template::SYSCALL_BODIES)?;
    let origin = crate::template::describe(&spec.template);
    let text = crate::template::render(&origin, &template, &body_values(project, number))?;
    files.set_text(&body_path(&spec.name), text)
}

/// Returns the template values for the syscall's body.
fn body_values(project: &Project, number: u32) -> Vec<(&'static str, String)> {
    const ARG_KEYS: [&str; crate::project::MAX_ARGS] =
        ["arg1", "arg2", "arg3", "arg4", "arg5", "arg6"];
    let spec = &project.syscall;
    let names: Vec<&str> = spec.args.iter().map(|arg| arg.name.as_str()).collect();
    let sum = if names.is_empty() {
        "0".to_string()
    } else {
        let terms: Vec<String> = names.iter().map(|name| format!("(long){name}")).collect();
        terms.join(" + ")
    };
    let mut values = vec![
        ("name", spec.name.clone()),
        ("define", define_macro(&spec.name, &spec.args)),
        ("args", names.join(", ")),
        ("sum", sum),
        ("number", number.to_string()),
    ];
    values.extend(
        ARG_KEYS
            .iter()
            .zip(&names)
            .map(|(key, name)| (*key, name.to_string())),
    );
    values
}

/// Formats `SYSCALL_DEFINEn(name, type1, arg1, ...)`.
pub fn define_macro(name: &str, args: &[SyscallArg]) -> String {
    let mut parts = vec![name.to_string()];
    for arg in args {
        parts.push(arg.c_type.clone());
        parts.push(arg.name.clone());
    }
    format!("SYSCALL_DEFINE{}({})", args.len(), parts.join(", "))
}

/// Formats `asmlinkage long sys_<name>(<type1> <arg1>, ...);`.
pub fn prototype(name: &str, args: &[SyscallArg]) -> String {
    let params: Vec<String> = args
        .iter()
        .map(|arg| {
            if arg.c_type.ends_with('*') {
                format!("{}{}", arg.c_type, arg.name)
            } else {
                format!("{} {}", arg.c_type, arg.name)
            }
        })
        .collect();
    let params = if params.is_empty() {
        "void".to_string()
    } else {
        params.join(", ")
    };
    format!("asmlinkage long sys_{name}({params});")
}

/// Adds `obj-y += <name>.o` after the first `obj-y` block of `kernel/Makefile`.
pub fn add_object(files: &mut FileSet, name: &str) -> anyhow::Result<()> {
    let path = Path::new(MAKEFILE);
    let text = files.text(path)?;
    let object = format!("{name}.o");
    if let Some(line) = text.lines().position(|line| mentions_object(line, &object)) {
        return Err(Failure::usage(format!(
            "{}:{}: the kernel already builds {object}; choose another [syscall] name in \
             kbuild.toml",
            files.display(path),
            line + 1
        )));
    }
    let after = first_obj_y_block_end(text).unwrap_or(usize::MAX);
    let new_text = insert_after(text, after, &format!("obj-y += {object}"));
    files.set_text(path, new_text)
}

fn mentions_object(line: &str, object: &str) -> bool {
    !line.trim_start().starts_with('#')
        && line
            .split(|c: char| c.is_whitespace() || c == '=')
            .any(|word| word == object)
}

/// Returns the last line (counting from 1) of the first `obj-y` assignment,
/// following `\` continuation lines.
fn first_obj_y_block_end(text: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|line| {
        line.strip_prefix("obj-y")
            .is_some_and(|rest| rest.trim_start().starts_with(['=', '+', ':']))
    })?;
    let mut end = start;
    while lines[end].trim_end().ends_with('\\') && end + 1 < lines.len() {
        end += 1;
    }
    Some(end + 1)
}

/// Adds the syscall's prototype to `include/linux/syscalls.h`, after the
/// prototype of `neighbor` if there is one, else before the final `#endif`.
pub fn add_prototype(
    files: &mut FileSet,
    name: &str,
    args: &[SyscallArg],
    neighbor: Option<&str>,
) -> anyhow::Result<()> {
    let path = Path::new(SYSCALLS_H);
    let text = files.text(path)?;
    let symbol = format!("sys_{name}");
    if let Some(line) = text.lines().position(|line| declares(line, &symbol)) {
        return Err(Failure::usage(format!(
            "{}:{}: {symbol} is already declared, so the kernel has a syscall of that name \
             on some architecture; choose another [syscall] name in kbuild.toml",
            files.display(path),
            line + 1
        )));
    }
    let after = neighbor
        .and_then(|neighbor| prototype_end(text, neighbor))
        .or_else(|| final_endif(text).map(|line| line - 1));
    let Some(after) = after else {
        return Err(Failure::usage(format!(
            "{} has no final #endif to add the prototype of {symbol} before; point \
             kernel.source at an unmodified kernel tree",
            files.display(path)
        )));
    };
    let new_text = insert_after(text, after, &prototype(name, args));
    files.set_text(path, new_text)
}

/// True if `line` declares `symbol` as a function.
fn declares(line: &str, symbol: &str) -> bool {
    line.match_indices(symbol).any(|(start, _)| {
        let before = line[..start].chars().next_back();
        let after = line[start + symbol.len()..].trim_start();
        let identifier_before = before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        !identifier_before && after.starts_with('(') && line.contains("asmlinkage")
    })
}

/// Returns the line (counting from 1) that ends the prototype of `symbol`.
fn prototype_end(text: &str, symbol: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|line| declares(line, symbol))?;
    let end = (start..lines.len()).find(|&index| lines[index].trim_end().ends_with(");"))?;
    Some(end + 1)
}

/// Returns the line (counting from 1) of the last `#endif`.
fn final_endif(text: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let index = lines
        .iter()
        .rposition(|line| line.trim_start().starts_with("#endif"))?;
    Some(index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "#ifndef _LINUX_SYSCALLS_H\n\
        asmlinkage long sys_read(unsigned int fd, char __user *buf, size_t count);\n\
        asmlinkage long sys_set_mempolicy_home_node(unsigned long start, unsigned long len,\n\
        \t\t\t\t\t    unsigned long flags);\n\
        \n\
        long ksys_shmdt(char __user *shmaddr);\n\
        #endif\n";

    const MAKEFILE_TEXT: &str = "#\n# Makefile\n#\n\nobj-y     = fork.o \\\n\
        \t    exec_domain.o panic.o\n\nobj-$(CONFIG_MODULES) += kmod.o\nobj-y += sched/\n";

    fn arg(c_type: &str, name: &str) -> SyscallArg {
        SyscallArg {
            c_type: c_type.into(),
            name: name.into(),
        }
    }

    fn files_with(path: &str, text: &str) -> FileSet {
        let mut files = FileSet::new(Path::new("/tree"));
        files.insert(Path::new(path), Some(text.as_bytes().to_vec()), None);
        files
    }

    fn prototype_added(neighbor: Option<&str>) -> String {
        let mut files = files_with(SYSCALLS_H, HEADER);
        let args = [arg("long", "a"), arg("long", "b")];
        add_prototype(&mut files, "kbuild_add", &args, neighbor).unwrap();
        files.text(Path::new(SYSCALLS_H)).unwrap().to_string()
    }

    #[test]
    fn define_macro_with_args() {
        let args = [arg("long", "a"), arg("const char __user *", "msg")];
        let expected = "SYSCALL_DEFINE2(kbuild_add, long, a, const char __user *, msg)";
        assert_eq!(define_macro("kbuild_add", &args), expected);
    }

    #[test]
    fn define_macro_without_args() {
        assert_eq!(
            define_macro("kbuild_nop", &[]),
            "SYSCALL_DEFINE0(kbuild_nop)"
        );
    }

    #[test]
    fn prototype_joins_pointer_star() {
        let args = [arg("long", "a"), arg("const char __user *", "msg")];
        let expected = "asmlinkage long sys_f(long a, const char __user *msg);";
        assert_eq!(prototype("f", &args), expected);
    }

    #[test]
    fn prototype_without_args_is_void() {
        assert_eq!(prototype("f", &[]), "asmlinkage long sys_f(void);");
    }

    #[test]
    fn prototype_follows_multiline_neighbor() {
        let text = prototype_added(Some("sys_set_mempolicy_home_node"));
        let expected = "unsigned long flags);\nasmlinkage long sys_kbuild_add(long a, long b);\n\n";
        assert!(text.contains(expected), "{text}");
    }

    #[test]
    fn prototype_without_neighbor_goes_before_endif() {
        let text = prototype_added(Some("sys_not_declared"));
        assert!(
            text.ends_with("shmaddr);\nasmlinkage long sys_kbuild_add(long a, long b);\n#endif\n")
        );
    }

    #[test]
    fn prototype_rejects_declared_name() {
        let mut files = files_with(SYSCALLS_H, HEADER);
        let error = add_prototype(&mut files, "read", &[], None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("syscalls.h:2:"), "{error}");
    }

    #[test]
    fn prototype_ignores_longer_symbol() {
        assert!(!declares("asmlinkage long sys_readv(int fd);", "sys_read"));
        assert!(!declares(
            "asmlinkage long compat_sys_read(int fd);",
            "sys_read"
        ));
    }

    #[test]
    fn object_after_first_obj_y_block() {
        let mut files = files_with(MAKEFILE, MAKEFILE_TEXT);
        add_object(&mut files, "kbuild_add").unwrap();
        let text = files.text(Path::new(MAKEFILE)).unwrap();
        assert!(
            text.contains("panic.o\nobj-y += kbuild_add.o\n\nobj-$"),
            "{text}"
        );
    }

    #[test]
    fn object_appended_without_obj_y() {
        let mut files = files_with(MAKEFILE, "# empty\nlib-y += a.o");
        add_object(&mut files, "kbuild_add").unwrap();
        let text = files.text(Path::new(MAKEFILE)).unwrap();
        assert_eq!(text, "# empty\nlib-y += a.o\nobj-y += kbuild_add.o\n");
    }

    #[test]
    fn object_rejects_built_name() {
        let mut files = files_with(MAKEFILE, MAKEFILE_TEXT);
        let error = add_object(&mut files, "panic").unwrap_err().to_string();
        assert!(error.contains("kernel/Makefile:6:"), "{error}");
    }
}
