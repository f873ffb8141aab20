//! The JUnit XML of `kbuild run` (`--junit FILE`): one test case per step
//! and one per check, in the shape GitLab, Jenkins and the GitHub test
//! report actions read (`testsuites` > `testsuite` > `testcase`).

use std::fmt::Write as _;

use super::report::{Report, StepStatus};

/// Renders the report as a JUnit XML document.
pub fn render(report: &Report) -> String {
    let mut cases = Vec::new();
    let broken = !matches!(report.exit_code, 0 | 1 | 3);
    for step in &report.steps {
        let body = match step.status {
            StepStatus::Passed | StepStatus::Skipped => Body::Out(step.reason.clone()),
            StepStatus::NotRun => Body::Skipped(step.reason.clone()),
            StepStatus::Failed | StepStatus::TimedOut | StepStatus::Interrupted => {
                let message = step.error.clone().unwrap_or_else(|| step.reason.clone());
                let mut text = message.clone();
                if let Some(log) = &step.log {
                    text.push_str(&format!("\nlog: {log}"));
                }
                if let Some(tail) = &report.console_tail {
                    text.push_str(&format!("\nconsole:\n{tail}"));
                }
                if broken || step.status != StepStatus::Failed {
                    Body::Error(first_line(&message), text)
                } else {
                    Body::Failure(first_line(&message), text)
                }
            }
        };
        cases.push(Case {
            class: "kbuild.steps",
            name: step.name.clone(),
            seconds: step.duration_s,
            body,
        });
    }
    for check in &report.checks {
        let body = match check.status.as_str() {
            "fail" => {
                let mut text = check.detail.clone();
                if let Some(tail) = &report.console_tail {
                    text.push_str(&format!("\nconsole:\n{tail}"));
                }
                Body::Failure(check.detail.clone(), text)
            }
            "skip" => Body::Skipped(check.detail.clone()),
            _ => Body::Out(check.detail.clone()),
        };
        cases.push(Case {
            class: "kbuild.checks",
            name: check.name.clone(),
            seconds: 0.0,
            body,
        });
    }
    if cases.is_empty() {
        // The run stopped before its first step (a project file that does
        // not load): one error case, so that CI shows why.
        let message = report.error.clone().unwrap_or_default();
        cases.push(Case {
            class: "kbuild.steps",
            name: "project".to_string(),
            seconds: 0.0,
            body: Body::Error(first_line(&message), message),
        });
    }
    document(report, &cases)
}

enum Body {
    /// Passed; the text goes to `system-out`.
    Out(String),
    Skipped(String),
    /// An assertion failed: message and full text.
    Failure(String, String),
    /// The pipeline broke: message and full text.
    Error(String, String),
}

struct Case {
    class: &'static str,
    name: String,
    seconds: f64,
    body: Body,
}

fn document(report: &Report, cases: &[Case]) -> String {
    let count = |wanted: fn(&Body) -> bool| cases.iter().filter(|case| wanted(&case.body)).count();
    let failures = count(|body| matches!(body, Body::Failure(..)));
    let errors = count(|body| matches!(body, Body::Error(..)));
    let skipped = count(|body| matches!(body, Body::Skipped(..)));

    let suite = format!("kbuild run ({})", report.mode);
    let counts = format!(
        "tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" \
         time=\"{:.3}\"",
        cases.len(),
        report.duration_s
    );

    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(xml, "<testsuites name=\"kbuild\" {counts}>");
    let _ = writeln!(
        xml,
        "  <testsuite name=\"{}\" {counts} timestamp=\"{}\">",
        escape(&suite),
        escape(report.started_at.trim_end_matches('Z'))
    );

    for case in cases {
        let _ = write!(
            xml,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
            case.class,
            escape(&case.name),
            case.seconds
        );
        match &case.body {
            Body::Out(text) => {
                let _ = write!(xml, "<system-out>{}</system-out>", escape(text));
            }
            Body::Skipped(message) => {
                let _ = write!(xml, "<skipped message=\"{}\"/>", escape(message));
            }
            Body::Failure(message, text) => {
                let _ = write!(
                    xml,
                    "<failure message=\"{}\" type=\"failure\">{}</failure>",
                    escape(message),
                    escape(text)
                );
            }
            Body::Error(message, text) => {
                let _ = write!(
                    xml,
                    "<error message=\"{}\" type=\"error\">{}</error>",
                    escape(message),
                    escape(text)
                );
            }
        }
        xml.push_str("</testcase>\n");
    }

    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

/// Escapes text for XML attributes and content, and drops the control
/// characters XML 1.0 cannot carry (a kernel console has them).
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            '\n' => escaped.push_str("&#10;"),
            '\t' | '\r' => escaped.push(' '),
            c if (c as u32) < 0x20 => {}
            '\u{fffe}' | '\u{ffff}' => {}
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_handles_markup_quotes_and_control_characters() {
        assert_eq!(
            escape("a<b>&\"c'\u{1b}[0m\nd"),
            "a&lt;b&gt;&amp;&quot;c&apos;[0m&#10;d"
        );
    }
}
