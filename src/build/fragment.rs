//! Kconfig fragments: parsing the options they request and checking which
//! of them survived into the final `.config`.

use std::collections::HashMap;
use std::fmt;

/// One option a fragment requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Symbol name with its `CONFIG_` prefix.
    pub name: String,
    /// The value as written after `=`, or `None` for `# CONFIG_X is not set` and `=n`.
    pub value: Option<String>,
    /// The fragment that requested it, as `crate::template::describe` names it.
    pub fragment: String,
    /// True when the kernel cannot boot without this option.
    pub required: bool,
}

/// An option whose final value differs from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub request: Request,
    pub actual: Actual,
}

/// An option's value in the final `.config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actual {
    Value(String),
    NotSet,
    /// No line at all: the symbol does not exist or its menu is hidden.
    Absent,
}

/// Parses one option line of a Kconfig file: `CONFIG_X=val` or
/// `# CONFIG_X is not set`. `=n` counts as not set, as in kconfig itself.
fn parse_line(line: &str) -> Option<(&str, Option<&str>)> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# ") {
        let name = rest.strip_suffix(" is not set")?;
        return name.starts_with("CONFIG_").then_some((name, None));
    }
    let (name, value) = line.split_once('=')?;
    if !name.starts_with("CONFIG_") || name.contains(char::is_whitespace) {
        return None;
    }
    let value = value.trim();
    Some((name, (value != "n").then_some(value)))
}

/// Parses the options of a fragment, in order.
pub fn parse_requests(fragment: &str, text: &str, required: bool) -> Vec<Request> {
    text.lines()
        .filter_map(parse_line)
        .map(|(name, value)| Request {
            name: name.to_string(),
            value: value.map(str::to_string),
            fragment: fragment.to_string(),
            required,
        })
        .collect()
}

/// Merges requests the way `merge_config.sh` does: a later fragment's value
/// for an option replaces an earlier one's. The first position is kept.
pub fn merge_requests(requests: impl IntoIterator<Item = Request>) -> Vec<Request> {
    let mut merged: Vec<Request> = Vec::new();
    for request in requests {
        match merged.iter_mut().find(|known| known.name == request.name) {
            Some(known) => *known = request,
            None => merged.push(request),
        }
    }
    merged
}

/// Parses a `.config` into option names and values, with `None` for a not-set option.
pub fn parse_config(text: &str) -> HashMap<&str, Option<&str>> {
    text.lines().filter_map(parse_line).collect()
}

/// Returns the requests whose value did not survive into `config`.
pub fn lost_options(requests: &[Request], config: &str) -> Vec<Lost> {
    let actual_values = parse_config(config);
    let mut lost = Vec::new();
    for request in requests {
        let actual = match actual_values.get(request.name.as_str()) {
            Some(Some(value)) => Actual::Value(value.to_string()),
            Some(None) => Actual::NotSet,
            None => Actual::Absent,
        };
        let survived = match (&request.value, &actual) {
            (Some(wanted), Actual::Value(value)) => wanted == value,
            (Some(_), _) => false,
            (None, Actual::Value(_)) => false,
            (None, _) => true,
        };
        if !survived {
            lost.push(Lost {
                request: request.clone(),
                actual,
            });
        }
    }
    lost
}

impl fmt::Display for Lost {
    /// Formats `CONFIG_X: requested y, got not set (fragment boot)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let requested = self.request.value.as_deref().unwrap_or("not set");
        let actual = match &self.actual {
            Actual::Value(value) => value.as_str(),
            Actual::NotSet => "not set",
            Actual::Absent => "absent",
        };
        write!(
            f,
            "{}: requested {requested}, got {actual} (fragment {})",
            self.request.name, self.request.fragment
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAGMENT: &str = "\
# a comment
CONFIG_TTY=y
# CONFIG_MODULES is not set
CONFIG_LOG_BUF_SHIFT=14
CONFIG_CMDLINE=\"console=ttyS0\"
CONFIG_DEBUG_INFO=n
not an option
";

    fn request(name: &str, value: Option<&str>) -> Request {
        Request {
            name: name.into(),
            value: value.map(str::to_string),
            fragment: "test".into(),
            required: false,
        }
    }

    #[test]
    fn parse_requests_reads_all_forms() {
        let requests = parse_requests("test", FRAGMENT, false);
        let expected = vec![
            request("CONFIG_TTY", Some("y")),
            request("CONFIG_MODULES", None),
            request("CONFIG_LOG_BUF_SHIFT", Some("14")),
            request("CONFIG_CMDLINE", Some("\"console=ttyS0\"")),
            request("CONFIG_DEBUG_INFO", None),
        ];
        assert_eq!(requests, expected);
    }

    #[test]
    fn parse_requests_skips_comments() {
        let requests = parse_requests("test", "# CONFIG_X is set\n#CONFIG_Y=y\n", false);
        assert!(requests.is_empty(), "{requests:?}");
    }

    #[test]
    fn merge_requests_later_wins() {
        let merged = merge_requests(vec![
            request("CONFIG_A", Some("y")),
            request("CONFIG_B", Some("y")),
            request("CONFIG_A", None),
        ]);
        assert_eq!(
            merged,
            vec![request("CONFIG_A", None), request("CONFIG_B", Some("y"))]
        );
    }

    #[test]
    fn lost_options_kept_value_survives() {
        let lost = lost_options(&[request("CONFIG_TTY", Some("y"))], "CONFIG_TTY=y\n");
        assert!(lost.is_empty(), "{lost:?}");
    }

    #[test]
    fn lost_options_not_set_reported() {
        let config = "# CONFIG_SERIAL_8250 is not set\n";
        let lost = lost_options(&[request("CONFIG_SERIAL_8250", Some("y"))], config);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].actual, Actual::NotSet);
    }

    #[test]
    fn lost_options_absent_reported() {
        let lost = lost_options(&[request("CONFIG_NO_SUCH", Some("y"))], "CONFIG_TTY=y\n");
        assert_eq!(lost[0].actual, Actual::Absent);
    }

    #[test]
    fn lost_options_other_value_reported() {
        let lost = lost_options(&[request("CONFIG_X", Some("y"))], "CONFIG_X=m\n");
        assert_eq!(lost[0].actual, Actual::Value("m".into()));
    }

    #[test]
    fn lost_options_unset_request_survives_absence() {
        let lost = lost_options(&[request("CONFIG_MODULES", None)], "CONFIG_TTY=y\n");
        assert!(lost.is_empty(), "{lost:?}");
    }

    #[test]
    fn lost_options_unset_request_reported_when_set() {
        let lost = lost_options(&[request("CONFIG_MODULES", None)], "CONFIG_MODULES=y\n");
        assert_eq!(lost.len(), 1);
    }

    #[test]
    fn lost_display_names_both_values() {
        let lost = Lost {
            request: request("CONFIG_TTY", Some("y")),
            actual: Actual::NotSet,
        };
        assert_eq!(
            lost.to_string(),
            "CONFIG_TTY: requested y, got not set (fragment test)"
        );
    }
}
