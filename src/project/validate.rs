//! Checks a parsed project file and turns it into a `Project`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawArg, RawBuild, RawProject, RawRun, RawTestArg, RawVm};
use super::*;
use crate::exit::Failure;

/// Seconds a direct boot under TCG may take by default: a tinyconfig kernel
/// boots in a few seconds, a defconfig kernel in well under a minute.
const DEFAULT_TEST_TIMEOUT_SECS: u64 = 180;

/// Parses and validates the text of the project file at `path`.
pub fn parse(path: &Path, text: &str) -> anyhow::Result<Project> {
    let raw: RawProject = toml::from_str(text).map_err(|error| {
        let location = error
            .span()
            .map(|span| locate(path, text, &span))
            .unwrap_or_else(|| path.display().to_string());
        Failure::usage(format!("{location}: {}", error.message().trim_end()))
    })?;
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let checker = Checker {
        path,
        text,
        dir: &dir,
    };

    Ok(Project {
        path: path.to_path_buf(),
        syscall: checker.syscall(&raw)?,
        test: checker.test(&raw)?,
        kernel: checker.kernel(&raw)?,
        build: checker.build(&raw.build)?,
        vm: checker.vm(raw.vm)?,
        run: checker.run(&raw.run)?,
        dir,
    })
}

/// Formats `path:line:column` for a byte range of `text`.
pub fn locate(path: &Path, text: &str, span: &Range<usize>) -> String {
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{}:{line}:{column}", path.display())
}

/// True for 64 hex digits.
fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// True for a C identifier: a letter or underscore, then letters, digits, underscores.
pub fn is_c_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// C keywords, which cannot name a syscall or a parameter.
const C_KEYWORDS: &[&str] = &[
    "auto",
    "break",
    "case",
    "char",
    "const",
    "continue",
    "default",
    "do",
    "double",
    "else",
    "enum",
    "extern",
    "float",
    "for",
    "goto",
    "if",
    "inline",
    "int",
    "long",
    "register",
    "restrict",
    "return",
    "short",
    "signed",
    "sizeof",
    "static",
    "struct",
    "switch",
    "typedef",
    "union",
    "unsigned",
    "void",
    "volatile",
    "while",
    "_Bool",
    "_Complex",
    "_Imaginary",
];

/// True for a C identifier that is not a C keyword, so it can name a
/// syscall or a parameter.
pub fn is_c_name(name: &str) -> bool {
    is_c_identifier(name) && !C_KEYWORDS.contains(&name)
}

/// True for a plausible C parameter type such as `const char __user *`.
fn is_c_type(c_type: &str) -> bool {
    !c_type.trim().is_empty()
        && c_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ' ' || c == '*')
        && c_type
            .split([' ', '*'])
            .filter(|word| !word.is_empty())
            .all(is_c_identifier)
}

struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    dir: &'a Path,
}

impl Checker<'_> {
    fn reject<T>(&self, span: &Range<usize>, message: String) -> anyhow::Result<T> {
        let location = if span.is_empty() && span.start == 0 {
            self.path.display().to_string()
        } else {
            locate(self.path, self.text, span)
        };
        Err(Failure::usage(format!("{location}: {message}")))
    }

    fn resolve(&self, value: &str) -> PathBuf {
        self.dir.join(value)
    }

    fn syscall(&self, raw: &RawProject) -> anyhow::Result<SyscallSpec> {
        let name = &raw.syscall.name;
        if !is_c_name(name.get_ref()) {
            return self.reject(
                &name.span(),
                format!(
                    "invalid syscall name {:?}: use a C identifier (letters, digits and \
                     underscores, not starting with a digit), for example \"kbuild_add\"",
                    name.get_ref()
                ),
            );
        }

        let args = match &raw.syscall.args {
            Some(args) => self.args(args)?,
            None => Vec::new(),
        };
        let number = raw.syscall.number.as_ref().map(|n| *n.get_ref());

        Ok(SyscallSpec {
            name: name.get_ref().clone(),
            args,
            template: self.template_ref(&raw.syscall.template, crate::template::SYSCALL_BODIES)?,
            number,
        })
    }

    fn args(&self, args: &Spanned<Vec<RawArg>>) -> anyhow::Result<Vec<SyscallArg>> {
        if args.get_ref().len() > MAX_ARGS {
            return self.reject(
                &args.span(),
                format!(
                    "{} syscall arguments given, but a syscall takes at most {MAX_ARGS}; \
                     pass a pointer to a struct for more",
                    args.get_ref().len()
                ),
            );
        }
        let mut checked: Vec<SyscallArg> = Vec::new();
        for arg in args.get_ref() {
            if !is_c_type(arg.c_type.get_ref()) {
                return self.reject(
                    &arg.c_type.span(),
                    format!(
                        "invalid C type {:?}: use words and `*`, for example \"long\" or \
                         \"const char __user *\"",
                        arg.c_type.get_ref()
                    ),
                );
            }
            if !is_c_name(arg.name.get_ref()) {
                return self.reject(
                    &arg.name.span(),
                    format!(
                        "invalid argument name {:?}: use a C identifier",
                        arg.name.get_ref()
                    ),
                );
            }
            if checked
                .iter()
                .any(|other| &other.name == arg.name.get_ref())
            {
                return self.reject(
                    &arg.name.span(),
                    format!("argument name {:?} is used twice", arg.name.get_ref()),
                );
            }
            checked.push(SyscallArg {
                c_type: arg.c_type.get_ref().trim().to_string(),
                name: arg.name.get_ref().clone(),
            });
        }
        Ok(checked)
    }

    fn template_ref(
        &self,
        value: &Spanned<String>,
        builtins: &[(&str, &str)],
    ) -> anyhow::Result<TemplateRef> {
        let text = value.get_ref();
        if let Some((name, _)) = builtins.iter().find(|(name, _)| name == text) {
            return Ok(TemplateRef::Builtin(name.to_string()));
        }
        let looks_like_path = text.contains('/') || text.contains('.');
        let path = self.resolve(text);
        if looks_like_path && path.is_file() {
            return Ok(TemplateRef::File(path));
        }
        let names: Vec<String> = builtins
            .iter()
            .map(|(name, _)| format!("{name:?}"))
            .collect();
        let problem = if looks_like_path {
            format!("file {} not found", path.display())
        } else {
            format!("unknown template {text:?}")
        };
        self.reject(
            &value.span(),
            format!(
                "{problem}; use one of {} or a path to a file",
                names.join(", ")
            ),
        )
    }

    fn test(&self, raw: &RawProject) -> anyhow::Result<TestSpec> {
        let test = &raw.test;
        let args: Vec<TestArg> = test
            .args
            .as_ref()
            .map(|args| {
                args.get_ref()
                    .iter()
                    .map(|arg| match arg {
                        RawTestArg::Int(value) => TestArg::Int(*value),
                        RawTestArg::Str(value) => TestArg::Str(value.clone()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let declared = raw.syscall.args.as_ref().map_or(0, |a| a.get_ref().len());
        if args.len() != declared {
            let span = test.args.as_ref().map_or(0..0, |a| a.span());
            return self.reject(
                &span,
                format!(
                    "[test] args has {} values but the syscall takes {declared} arguments; \
                     give one value per argument",
                    args.len()
                ),
            );
        }
        if let Some(timeout) = &test.timeout {
            if *timeout.get_ref() == 0 {
                return self.reject(&timeout.span(), "timeout must be at least 1 second".into());
            }
        }
        Ok(TestSpec {
            args,
            expect: test.expect.unwrap_or(0),
            timeout_secs: test
                .timeout
                .as_ref()
                .map_or(DEFAULT_TEST_TIMEOUT_SECS, |t| *t.get_ref()),
        })
    }

    fn kernel(&self, raw: &RawProject) -> anyhow::Result<KernelSpec> {
        let arch = &raw.kernel.arch;
        let arch = match arch.get_ref().as_str() {
            "x86_64" => Arch::X86_64,
            other => {
                return self.reject(
                    &arch.span(),
                    format!(
                        "unsupported arch {other:?}; supported: {}",
                        Arch::NAMES.join(", ")
                    ),
                )
            }
        };
        let source = &raw.kernel.source;
        if source.get_ref().trim().is_empty() {
            return self.reject(
                &source.span(),
                "kernel source is empty; give the path of a kernel tree or tarball".into(),
            );
        }
        let text = source.get_ref().trim();
        let scheme = text
            .split("://")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !(text.contains("://") && (scheme == "https" || scheme == "http")) {
            if let Some(sha256) = &raw.kernel.sha256 {
                return self.reject(
                    &sha256.span(),
                    "sha256 is only for a kernel source URL; remove it for a local tree or tarball"
                        .into(),
                );
            }
            return Ok(KernelSpec {
                source: self.resolve(source.get_ref()),
                download: None,
                arch,
            });
        }
        if crate::image::has_credentials(text) {
            return self.reject(
                &source.span(),
                format!("kernel source URL {}", crate::image::CREDENTIALS_IN_URL),
            );
        }
        let sha256 =
            match &raw.kernel.sha256 {
                Some(value) if is_sha256(value.get_ref()) => value.get_ref().to_ascii_lowercase(),
                Some(value) => {
                    return self.reject(
                        &value.span(),
                        format!("sha256 {:?} is not 64 hex digits", value.get_ref()),
                    )
                }
                None => return self.reject(
                    &source.span(),
                    "a kernel source URL needs its checksum: add sha256 = \"...\" under [kernel] \
                     (kernel.org publishes sha256sums.asc beside each release)"
                        .into(),
                ),
            };
        let name = text.rsplit('/').next().unwrap_or_default();
        if name.is_empty() {
            return self.reject(
                &source.span(),
                "kernel source URL names no file; give the URL of a .tar.xz or .tar.gz".into(),
            );
        }
        Ok(KernelSpec {
            source: PathBuf::from(name),
            download: Some(SourceDownload {
                url: text.to_string(),
                sha256,
            }),
            arch,
        })
    }

    fn build(&self, build: &RawBuild) -> anyhow::Result<BuildSpec> {
        if let Some(jobs) = &build.jobs {
            if *jobs.get_ref() == 0 {
                return self.reject(
                    &jobs.span(),
                    "jobs must be at least 1; remove the key to pick from CPUs and memory".into(),
                );
            }
        }
        let config = match &build.config {
            None => ConfigBase::Tinyconfig,
            Some(value) if value.get_ref() == "guest" => {
                return self.reject(
                    &value.span(),
                    format!(
                        "[build] config \"guest\" is only for kernels built for the VM; set it \
                         as [vm] config, and use {} here",
                        ConfigBase::CHOICES
                    ),
                )
            }
            Some(value) => self.config_base(value, ConfigBase::CHOICES)?,
        };
        let fragments = match &build.fragments {
            None => vec![TemplateRef::Builtin("boot".to_string())],
            Some(list) => list
                .iter()
                .map(|f| self.template_ref(f, crate::template::KCONFIG_FRAGMENTS))
                .collect::<anyhow::Result<_>>()?,
        };
        let ccache = match build
            .ccache
            .as_ref()
            .map(|c| (c.get_ref().as_str(), c.span()))
        {
            None | Some(("auto", _)) => Ccache::Auto,
            Some(("on", _)) => Ccache::On,
            Some(("off", _)) => Ccache::Off,
            Some((other, span)) => {
                return self.reject(
                    &span,
                    format!("invalid ccache value {other:?}; use \"auto\", \"on\" or \"off\""),
                )
            }
        };
        Ok(BuildSpec {
            jobs: build.jobs.as_ref().map(|j| *j.get_ref()),
            config,
            fragments,
            ccache,
            dir: self.resolve(build.dir.as_ref().map_or("build", |d| d.get_ref())),
            lsmod: None,
        })
    }

    fn vm(&self, raw: RawVm) -> anyhow::Result<VmSpec> {
        let config = match &raw.config {
            None => ConfigBase::Guest,
            Some(value) if value.get_ref() == "running" => {
                return self.reject(
                    &value.span(),
                    format!(
                        "[vm] config \"running\" would take the host's config; use {}",
                        ConfigBase::VM_CHOICES
                    ),
                )
            }
            Some(value) => self.config_base(value, ConfigBase::VM_CHOICES)?,
        };
        let fragments = match &raw.fragments {
            None if matches!(config, ConfigBase::Tinyconfig | ConfigBase::Defconfig) => {
                vec![TemplateRef::Builtin("vm".to_string())]
            }
            None => Vec::new(),
            Some(list) => list
                .iter()
                .map(|f| self.template_ref(f, crate::template::KCONFIG_FRAGMENTS))
                .collect::<anyhow::Result<_>>()?,
        };
        Ok(VmSpec {
            profile: raw
                .profile
                .map_or_else(|| "debian-12".to_string(), Spanned::into_inner),
            config,
            fragments,
            localmodconfig: raw.localmodconfig.unwrap_or(false),
        })
    }

    fn run(&self, raw: &RawRun) -> anyhow::Result<RunSpec> {
        let mut timeouts = std::collections::BTreeMap::new();
        for (name, seconds) in raw.timeouts.iter().flatten() {
            let Some(step) = crate::run::Step::parse(name) else {
                return self.reject(
                    &seconds.span(),
                    format!(
                        "[run.timeouts] has no step {name:?}; the steps are {}",
                        crate::run::step_names()
                    ),
                );
            };
            let value = match seconds.get_ref() {
                toml::Value::Integer(value) if *value >= 1 => *value as u64,
                other => {
                    return self.reject(
                        &seconds.span(),
                        format!(
                            "[run.timeouts] {name} = {other} is invalid; give a whole number of \
                             seconds, at least 1"
                        ),
                    )
                }
            };
            timeouts.insert(step, Duration::from_secs(value));
        }
        Ok(RunSpec { timeouts })
    }

    fn config_base(&self, value: &Spanned<String>, choices: &str) -> anyhow::Result<ConfigBase> {
        match value.get_ref().as_str() {
            "defconfig" => Ok(ConfigBase::Defconfig),
            "tinyconfig" => Ok(ConfigBase::Tinyconfig),
            "running" => Ok(ConfigBase::Running),
            "guest" => Ok(ConfigBase::Guest),
            other => {
                let path = self.resolve(other);
                if path.is_file() {
                    Ok(ConfigBase::File(path))
                } else {
                    self.reject(
                        &value.span(),
                        format!(
                            "config base {other:?} is not a known base and file {} not found; \
                             use {}",
                            path.display(),
                            choices
                        ),
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[syscall]
name = "kbuild_add"
args = [{ type = "long", name = "a" }, { type = "long", name = "b" }]

[test]
args = [20, 22]
expect = 42

[kernel]
source = "linux"
"#;

    fn parse_error(text: &str) -> String {
        parse(Path::new("/p/kbuild.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn run_timeouts_override_named_steps() {
        let text = format!("{GOOD}\n[run.timeouts]\nbuild = 600\nreboot = 1200\n");
        let project = parse(Path::new("/p/kbuild.toml"), &text).unwrap();
        use crate::run::Step;
        assert_eq!(project.run.timeout(Step::Build), Duration::from_secs(600));
        assert_eq!(project.run.timeout(Step::Reboot), Duration::from_secs(1200));
        assert_eq!(project.run.timeout(Step::Vm), Step::Vm.default_timeout());

        let unknown = parse_error(&format!("{GOOD}\n[run.timeouts]\ncompile = 600\n"));
        assert!(unknown.contains("no step \"compile\""), "{unknown}");
        assert!(unknown.contains("image, vm, deps"), "{unknown}");
        for bad in ["0", "-5", "\"1h\"", "1.5"] {
            let message = parse_error(&format!("{GOOD}\n[run.timeouts]\nbuild = {bad}\n"));
            assert!(
                message.contains("whole number of seconds"),
                "{bad}: {message}"
            );
        }
        let hash = "a".repeat(64);
        let secret = parse_error(&GOOD.replace(
            "source = \"linux\"",
            &format!("source = \"https://user:s3cret@h/linux.tar.xz\"\nsha256 = \"{hash}\""),
        ));
        assert!(secret.contains("user name or password"), "{secret}");
        assert!(!secret.contains("s3cret"), "{secret}");
    }

    #[test]
    fn source_url_without_sha256_rejected() {
        let text = GOOD.replace(
            "source = \"linux\"",
            "source = \"https://h/linux-6.1.tar.xz\"",
        );
        let message = parse_error(&text);
        assert!(message.contains("needs its checksum"), "{message}");
    }

    #[test]
    fn sha256_for_local_source_rejected() {
        let text = GOOD.replace(
            "source = \"linux\"",
            &format!("source = \"linux\"\nsha256 = \"{}\"", "a".repeat(64)),
        );
        let message = parse_error(&text);
        assert!(
            message.contains("only for a kernel source URL"),
            "{message}"
        );
    }

    #[test]
    fn guest_config_only_in_vm_section() {
        let message = parse_error(&format!("{GOOD}\n[build]\nconfig = \"guest\"\n"));
        assert!(message.contains("[vm] config"), "{message}");
    }

    #[test]
    fn vm_tinyconfig_gets_vm_fragment() {
        let text = format!("{GOOD}\n[vm]\nconfig = \"tinyconfig\"\n");
        let project = parse(Path::new("/p/kbuild.toml"), &text).unwrap();
        assert_eq!(project.vm.fragments, [TemplateRef::Builtin("vm".into())]);
    }

    #[test]
    fn good_file_parses() {
        let project = parse(Path::new("/p/kbuild.toml"), GOOD).unwrap();
        assert_eq!(project.syscall.name, "kbuild_add");
        assert_eq!(project.syscall.args.len(), 2);
        assert_eq!(project.test.expect, 42);
        assert_eq!(project.kernel.source, PathBuf::from("/p/linux"));
        assert_eq!(project.build.dir, PathBuf::from("/p/build"));
        assert_eq!(project.build.config, ConfigBase::Tinyconfig);
    }

    #[test]
    fn unknown_key_names_line_and_choices() {
        let message = parse_error(&GOOD.replace("expect = 42", "expected = 42"));
        assert!(message.starts_with("/p/kbuild.toml:8:1:"), "{message}");
        assert!(message.contains("unknown field `expected`"), "{message}");
        assert!(message.contains("`expect`"), "{message}");
    }

    #[test]
    fn bad_name_names_line_and_column() {
        let message = parse_error(&GOOD.replace("\"kbuild_add\"", "\"1add\""));
        assert!(message.starts_with("/p/kbuild.toml:3:8:"), "{message}");
        assert!(message.contains("C identifier"), "{message}");
    }

    #[test]
    fn bad_ccache_lists_choices() {
        let message = parse_error(&format!("{GOOD}\n[build]\nccache = \"maybe\"\n"));
        assert!(message.contains(":14:10:"), "{message}");
        assert!(message.contains("\"auto\", \"on\" or \"off\""), "{message}");
    }

    #[test]
    fn unknown_template_lists_builtins() {
        let message = parse_error(&GOOD.replace("[test]", "template = \"nope\"\n[test]"));
        assert!(message.contains("unknown template \"nope\""), "{message}");
        assert!(message.contains("\"sum\""), "{message}");
    }

    #[test]
    fn seven_args_rejected() {
        let args: Vec<String> = (0..7)
            .map(|i| format!("{{ type = \"long\", name = \"a{i}\" }}"))
            .collect();
        let text = GOOD.replace(
            "[{ type = \"long\", name = \"a\" }, { type = \"long\", name = \"b\" }]",
            &format!("[{}]", args.join(", ")),
        );
        assert!(parse_error(&text).contains("at most 6"));
    }

    #[test]
    fn test_args_must_match_count() {
        let message = parse_error(&GOOD.replace("args = [20, 22]", "args = [20]"));
        assert!(
            message.contains("1 values but the syscall takes 2"),
            "{message}"
        );
    }

    #[test]
    fn string_test_args_parse() {
        let text = GOOD.replace("args = [20, 22]", "args = [\"hi\", 22]");
        let project = parse(Path::new("/p/kbuild.toml"), &text).unwrap();
        assert_eq!(project.test.args[0], TestArg::Str("hi".into()));
    }

    #[test]
    fn keyword_argument_name_rejected() {
        let message = parse_error(&GOOD.replace("name = \"a\"", "name = \"int\""));
        assert!(
            message.contains("invalid argument name \"int\""),
            "{message}"
        );
    }

    #[test]
    fn c_type_checks() {
        assert!(is_c_type("const char __user *"));
        assert!(is_c_type("unsigned long"));
        assert!(!is_c_type("long; rm"));
        assert!(!is_c_type(""));
    }
}
