//! Parsers for VBoxManage's output: `showvminfo --machinereadable`,
//! `list vms`, `list hdds`/`dvds` and `showmediuminfo`.
//!
//! The manual documents the machine-readable format only as `key="value"`
//! lines. Keys such as `VMState`, `CfgFile`, `Forwarding(N)` and
//! `"SATA-0-0"` come from VBoxManage's output: a key or value is either bare
//! or double-quoted, and inside quotes `\"`, `\\` and `\n` are escapes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::vm::VmStatus;

/// The fields the backend reads from `showvminfo --machinereadable`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineInfo {
    /// `VMState`, such as `running` or `poweroff`.
    pub state: String,
    /// `CfgFile`: the settings file of the registered VM.
    pub settings_file: Option<PathBuf>,
    /// Storage controller names, in VirtualBox's order.
    pub controllers: Vec<String>,
    /// Medium path per (controller, port) on device 0; empty ports are left out.
    pub attachments: BTreeMap<(String, u32), String>,
    /// NAT port-forwarding rules of adapter 1.
    pub forwards: Vec<ForwardRule>,
}

/// One NAT port-forwarding rule, `name,protocol,host-IP,host-port,guest-IP,guest-port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRule {
    pub name: String,
    pub protocol: String,
    pub host_ip: String,
    pub host_port: Option<u16>,
    pub guest_ip: String,
    pub guest_port: Option<u16>,
}

impl ForwardRule {
    /// Parses a rule; `None` unless it has the six fields.
    pub fn parse(rule: &str) -> Option<ForwardRule> {
        let fields: Vec<&str> = rule.split(',').collect();
        let [name, protocol, host_ip, host_port, guest_ip, guest_port] = fields[..] else {
            return None;
        };
        Some(ForwardRule {
            name: name.to_string(),
            protocol: protocol.to_string(),
            host_ip: host_ip.to_string(),
            host_port: host_port.parse().ok(),
            guest_ip: guest_ip.to_string(),
            guest_port: guest_port.parse().ok(),
        })
    }
}

impl MachineInfo {
    /// Parses the whole `showvminfo --machinereadable` output.
    pub fn parse(text: &str) -> anyhow::Result<MachineInfo> {
        let fields = parse_machine_readable(text)?;
        let state = fields
            .get("VMState")
            .context("showvminfo printed no VMState")?
            .clone();
        let controllers: Vec<String> = (0..)
            .map_while(|index| {
                fields
                    .get(&format!("storagecontrollername{index}"))
                    .cloned()
            })
            .collect();
        let mut attachments = BTreeMap::new();
        for (key, value) in &fields {
            let Some((controller, port)) = attachment_slot(key, &controllers) else {
                continue;
            };
            if value != "none" && value != "emptydrive" {
                attachments.insert((controller, port), value.clone());
            }
        }
        let forwards = (0..)
            .map_while(|index| fields.get(&format!("Forwarding({index})")))
            .filter_map(|rule| ForwardRule::parse(rule))
            .collect();
        Ok(MachineInfo {
            state,
            settings_file: fields.get("CfgFile").map(PathBuf::from),
            controllers,
            attachments,
            forwards,
        })
    }

    pub fn is_running(&self) -> bool {
        status_of(&self.state) == VmStatus::Running
    }

    pub fn attachment(&self, controller: &str, port: u32) -> Option<&str> {
        self.attachments
            .get(&(controller.to_string(), port))
            .map(String::as_str)
    }

    pub fn forward(&self, name: &str) -> Option<&ForwardRule> {
        self.forwards.iter().find(|rule| rule.name == name)
    }
}

/// Maps a `VMState` to a status: every state with a VM process counts as running.
pub fn status_of(vm_state: &str) -> VmStatus {
    match vm_state {
        "poweroff" | "aborted" | "saved" | "aborted-saved" | "teleported" => VmStatus::Stopped,
        _ => VmStatus::Running,
    }
}

/// Reads `"CONTROLLER-PORT-DEVICE"` keys of device 0 on a known controller.
fn attachment_slot(key: &str, controllers: &[String]) -> Option<(String, u32)> {
    let mut parts = key.rsplitn(3, '-');
    let device = parts.next()?;
    let port = parts.next()?.parse().ok()?;
    let controller = parts.next()?;
    let known = controllers.iter().any(|name| name == controller);
    (device == "0" && known).then(|| (controller.to_string(), port))
}

/// Parses `key=value` lines into a map; later keys replace earlier ones.
pub fn parse_machine_readable(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut fields = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = parse_line(line)
            .with_context(|| format!("parsing line {} of showvminfo: {line:?}", number + 1))?;
        fields.insert(parsed.0, parsed.1);
    }
    Ok(fields)
}

fn parse_line(line: &str) -> anyhow::Result<(String, String)> {
    let (key, rest) = parse_token(line, '=')?;
    let Some(rest) = rest.strip_prefix('=') else {
        bail!("missing `=` after the key");
    };
    let (value, rest) = parse_token(rest, '\n')?;
    if !rest.is_empty() {
        bail!("unexpected text after the value: {rest:?}");
    }
    Ok((key, value))
}

/// Reads a quoted or bare token; a bare token ends at `end`. Returns the
/// unescaped token and the text after it.
fn parse_token(text: &str, end: char) -> anyhow::Result<(String, &str)> {
    let Some(quoted) = text.strip_prefix('"') else {
        let stop = text.find(end).unwrap_or(text.len());
        return Ok((text[..stop].to_string(), &text[stop..]));
    };
    let mut token = String::new();
    let mut chars = quoted.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Ok((token, &quoted[index + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => token.push('\n'),
                Some((_, escaped)) => token.push(escaped),
                None => bail!("a backslash ends the line"),
            },
            _ => token.push(c),
        }
    }
    bail!("missing closing quote")
}

/// Returns the VM names of `list vms`, whose lines read `"NAME" {UUID}`.
pub fn parse_vm_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let (name, _uuid) = line.trim_end().rsplit_once(" {")?;
            Some(name.strip_prefix('"')?.strip_suffix('"')?.to_string())
        })
        .collect()
}

/// Returns the `Location:` of each medium in `list hdds` or `list dvds`.
pub fn parse_medium_locations(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.strip_prefix("Location:"))
        .map(|location| PathBuf::from(location.trim()))
        .collect()
}

/// Returns the capacity in MiB from `showmediuminfo` (`Capacity: 2048 MBytes`).
pub fn parse_capacity_mib(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("Capacity:"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"name="kb \"q\" vm"
UUID="1f18dc4d-2ada-44cd-8dd5-c5c5694a7f1a"
CfgFile="/v/kb/kb.vbox"
memory=2048
VMState="running"
storagecontrollername0="SATA"
storagecontrollerportcount0="2"
"SATA-0-0"="/v/disk.vdi"
"SATA-ImageUUID-0-0"="6705c427-b682-4d10-890c-c3af9f10287a"
"SATA-1-0"="none"
nic1="nat"
Forwarding(0)="ssh,tcp,127.0.0.1,2222,,22"
Forwarding(1)="web,tcp,,8080,,80"
uartmode1="file,C:\\logs\\console.log"
"#;

    #[test]
    fn machine_readable_unescapes_quotes() {
        let fields = parse_machine_readable(SAMPLE).expect("parses");
        assert_eq!(fields["name"], "kb \"q\" vm");
        assert_eq!(fields["memory"], "2048");
        assert_eq!(fields["uartmode1"], "file,C:\\logs\\console.log");
        assert_eq!(fields["SATA-0-0"], "/v/disk.vdi");
    }

    #[test]
    fn machine_readable_rejects_open_quote() {
        assert!(parse_machine_readable("name=\"kb\n").is_err());
        assert!(parse_machine_readable("name\"kb\"\n").is_err());
    }

    #[test]
    fn machine_info_reads_storage_and_rules() {
        let info = MachineInfo::parse(SAMPLE).expect("parses");
        assert!(info.is_running());
        assert_eq!(info.settings_file, Some(PathBuf::from("/v/kb/kb.vbox")));
        assert_eq!(info.controllers, ["SATA"]);
        assert_eq!(info.attachment("SATA", 0), Some("/v/disk.vdi"));
        assert_eq!(info.attachment("SATA", 1), None);
        assert_eq!(info.attachments.len(), 1);
        let ssh = info.forward("ssh").expect("ssh rule");
        assert_eq!(ssh.host_ip, "127.0.0.1");
        assert_eq!(ssh.host_port, Some(2222));
        assert_eq!(ssh.guest_port, Some(22));
        assert_eq!(
            info.forward("web").map(|rule| rule.host_ip.as_str()),
            Some("")
        );
    }

    #[test]
    fn machine_info_needs_state() {
        assert!(MachineInfo::parse("name=\"kb\"\n").is_err());
    }

    #[test]
    fn status_of_states() {
        assert_eq!(status_of("poweroff"), VmStatus::Stopped);
        assert_eq!(status_of("aborted"), VmStatus::Stopped);
        assert_eq!(status_of("running"), VmStatus::Running);
        assert_eq!(status_of("stopping"), VmStatus::Running);
        assert_eq!(status_of("paused"), VmStatus::Running);
    }

    #[test]
    fn forward_rule_needs_six_fields() {
        assert!(ForwardRule::parse("ssh,tcp,127.0.0.1,2222,22").is_none());
        assert!(ForwardRule::parse("ssh,tcp,127.0.0.1,2222,,22").is_some());
    }

    #[test]
    fn vm_names_from_list() {
        let text = "\"kb one\" {1f18dc4d-2ada-44cd-8dd5-c5c5694a7f1a}\n\"b\" {00000000-0000-0000-0000-000000000000}\n";
        assert_eq!(parse_vm_names(text), ["kb one", "b"]);
        assert!(parse_vm_names("").is_empty());
    }

    #[test]
    fn media_locations_and_capacity() {
        let text =
            "UUID:           1\nLocation:       /v/disk.vdi\nCapacity:       20480 MBytes\n\n\
                    UUID:           2\nLocation:       /v/seed.vdi\n";
        assert_eq!(
            parse_medium_locations(text),
            [PathBuf::from("/v/disk.vdi"), PathBuf::from("/v/seed.vdi")]
        );
        assert_eq!(parse_capacity_mib(text), Some(20480));
        assert_eq!(parse_capacity_mib("UUID: 1\n"), None);
    }
}
