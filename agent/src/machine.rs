//! This box's machine identity: what the agent records in the edge database
//! whenever it opens it (`sluice_machine(?)`), so that a database file that finds
//! itself on another machine (copied, or inside a cloned image) continues
//! under a new epoch instead of sending rows the cloud would take for
//! replays.
//!
//! The identity is `device.machine_id` when set; otherwise it is derived
//! from the machine: the text of `/etc/machine-id` and the MAC addresses of
//! the network interfaces backed by hardware, hashed (HMAC-SHA-256 keyed
//! with a sluice-specific key, as systemd asks of anything derived from the
//! machine id, so the recorded value does not reveal `/etc/machine-id`).
//! A cloned image usually carries the same `/etc/machine-id`; the MAC
//! addresses of the boxes' own network hardware still differ.

use std::path::Path;

/// The longest machine id `sluice_machine` records, in characters.
pub const MAX_MACHINE_ID_CHARS: usize = 256;

/// The HMAC key: the derived identity is this application's, not the
/// machine id itself. Changing it changes every box's identity (and so
/// starts a new epoch everywhere): never change it.
const APP_KEY: &[u8] = b"sluice machine identity v1";

/// The MAC address of an interface that has none or has not set one.
const ZERO_MAC: &str = "00:00:00:00:00:00";

/// Checks a configured machine id by `sluice_machine`'s rule: 1 to
/// [`MAX_MACHINE_ID_CHARS`] characters, no control characters.
pub fn check_machine_id(id: &str) -> Result<(), String> {
    let n = id.chars().count();
    if n == 0 {
        return Err("the machine id must not be empty (leave it out to derive it)".into());
    }
    if n > MAX_MACHINE_ID_CHARS {
        return Err(format!(
            "the machine id is {n} characters long, the limit is {MAX_MACHINE_ID_CHARS}"
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("the machine id must not contain control characters".into());
    }
    Ok(())
}

/// The identity to record: `configured` when set, else [`derive`] from the
/// root file system. `None` when neither the config nor the machine gives
/// one (no `/etc/machine-id`, no network hardware).
pub fn resolve(configured: Option<&str>) -> Option<String> {
    match configured {
        Some(id) => Some(id.to_owned()),
        None => derive(Path::new("/")),
    }
}

/// The identity derived from the machine under `root` (`/` in use; a
/// folder laid out like one in tests): 32 hex digits of the HMAC of
/// `etc/machine-id` (or, without it, `var/lib/dbus/machine-id`) and the
/// sorted MAC addresses in `sys/class/net/*/address` of the interfaces
/// backed by hardware (those with a `device` link: not `lo`, bridges,
/// `veth`, tunnels, whose addresses change from boot to boot), skipping
/// all-zero and randomly assigned addresses (`addr_assign_type` 1).
/// `None` when there is neither a machine id nor such an interface.
pub fn derive(root: &Path) -> Option<String> {
    let machine_id = ["etc/machine-id", "var/lib/dbus/machine-id"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(root.join(p)).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty());
    let macs = hardware_macs(&root.join("sys/class/net"));
    if machine_id.is_none() && macs.is_empty() {
        return None;
    }
    let mut text = format!("machine-id {}\n", machine_id.unwrap_or_default());
    for mac in &macs {
        text.push_str("mac ");
        text.push_str(mac);
        text.push('\n');
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, APP_KEY);
    let tag = ring::hmac::sign(&key, text.as_bytes());
    Some(
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// The sorted, lower-case MAC addresses of the hardware interfaces in
/// `net` (a `/sys/class/net`).
fn hardware_macs(net: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(net) else {
        return Vec::new();
    };
    let mut macs: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "lo")
        .map(|e| e.path())
        .filter(|dir| dir.join("device").exists())
        .filter(|dir| {
            // 1: a random address, new at every boot (or every connection).
            std::fs::read_to_string(dir.join("addr_assign_type")).map_or(true, |t| t.trim() != "1")
        })
        .filter_map(|dir| std::fs::read_to_string(dir.join("address")).ok())
        .map(|a| a.trim().to_ascii_lowercase())
        .filter(|a| !a.is_empty() && a != ZERO_MAC)
        .collect();
    macs.sort();
    macs.dedup();
    macs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A folder laid out like a machine's root: a machine id and interfaces.
    struct FakeRoot(tempfile::TempDir);

    impl FakeRoot {
        fn new(machine_id: Option<&str>) -> FakeRoot {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("etc")).unwrap();
            fs::create_dir_all(dir.path().join("sys/class/net")).unwrap();
            if let Some(id) = machine_id {
                fs::write(dir.path().join("etc/machine-id"), format!("{id}\n")).unwrap();
            }
            FakeRoot(dir)
        }

        /// An interface; `hardware`: it has a `device` link.
        fn interface(&self, name: &str, mac: &str, hardware: bool) -> &Self {
            let dir = self.0.path().join("sys/class/net").join(name);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("address"), format!("{mac}\n")).unwrap();
            if hardware {
                fs::create_dir_all(dir.join("device")).unwrap();
            }
            self
        }

        fn derive(&self) -> Option<String> {
            derive(self.0.path())
        }
    }

    const ID: &str = "4c4c4544004a3610804bb4c04f4b4e32";

    #[test]
    fn the_identity_is_32_hex_digits_and_stable() {
        let root = FakeRoot::new(Some(ID));
        root.interface("eth0", "dc:a6:32:01:02:03", true);
        let a = root.derive().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
        assert_eq!(root.derive().unwrap(), a);
        // It does not reveal the machine id.
        assert!(!a.contains(&ID[..8]));
    }

    #[test]
    fn a_clone_with_the_same_machine_id_differs_by_its_network_hardware() {
        let original = FakeRoot::new(Some(ID));
        original.interface("eth0", "dc:a6:32:01:02:03", true);
        let clone = FakeRoot::new(Some(ID));
        clone.interface("eth0", "dc:a6:32:09:08:07", true);
        assert_ne!(original.derive(), clone.derive());
        let other_id = FakeRoot::new(Some("0123456789abcdef0123456789abcdef"));
        other_id.interface("eth0", "dc:a6:32:01:02:03", true);
        assert_ne!(original.derive(), other_id.derive());
    }

    #[test]
    fn virtual_zero_random_and_loopback_interfaces_do_not_count() {
        let plain = FakeRoot::new(Some(ID));
        plain.interface("eth0", "DC:A6:32:01:02:03", true);
        let busy = FakeRoot::new(Some(ID));
        busy.interface("eth0", "dc:a6:32:01:02:03", true)
            .interface("lo", "00:00:00:00:00:00", false)
            .interface("docker0", "02:42:ac:11:00:01", false)
            .interface("veth1a2b", "3e:11:22:33:44:55", false)
            .interface("can0", ZERO_MAC, true)
            .interface("wlan0", "7a:00:00:00:00:01", true);
        fs::write(
            busy.0.path().join("sys/class/net/wlan0/addr_assign_type"),
            "1\n",
        )
        .unwrap();
        // Upper case or lower case, the same machine.
        assert_eq!(plain.derive(), busy.derive());
    }

    #[test]
    fn interfaces_are_sorted_so_the_listing_order_does_not_matter() {
        let a = FakeRoot::new(None);
        a.interface("eth0", "dc:a6:32:01:02:03", true)
            .interface("eth1", "dc:a6:32:01:02:04", true);
        let b = FakeRoot::new(None);
        b.interface("eth1", "dc:a6:32:01:02:03", true)
            .interface("eth0", "dc:a6:32:01:02:04", true);
        assert_eq!(a.derive(), b.derive());
        assert!(a.derive().is_some(), "MAC addresses alone are an identity");
    }

    #[test]
    fn the_dbus_machine_id_stands_in_and_nothing_gives_none() {
        let root = FakeRoot::new(None);
        assert_eq!(root.derive(), None);
        fs::create_dir_all(root.0.path().join("var/lib/dbus")).unwrap();
        fs::write(root.0.path().join("var/lib/dbus/machine-id"), ID).unwrap();
        assert_eq!(root.derive(), FakeRoot::new(Some(ID)).derive());
        // An empty /etc/machine-id (an image prepared for first boot) is none.
        assert_eq!(FakeRoot::new(Some("")).derive(), None);
    }

    #[test]
    fn a_configured_machine_id_wins_and_is_checked() {
        assert_eq!(resolve(Some("rack-7")).as_deref(), Some("rack-7"));
        assert!(check_machine_id("rack-7").is_ok());
        assert!(check_machine_id("").unwrap_err().contains("empty"));
        assert!(check_machine_id("a\tb").unwrap_err().contains("control"));
        let long = "m".repeat(MAX_MACHINE_ID_CHARS + 1);
        assert!(check_machine_id(&long).unwrap_err().contains("256"));
        assert!(check_machine_id(&long[1..]).is_ok());
    }
}
