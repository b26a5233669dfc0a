//! Settings of a pod's network namespace (its `/proc/sys/net` files) that
//! programs and administrators change and that a new namespace would not
//! have: carried with the pod. A pod that lets its users make ICMP "ping"
//! sockets (`net.ipv4.ping_group_range`), takes ports from another range,
//! or keeps connections alive on other timers, has them again where it is
//! restored. Only the settings listed here are read from an image and
//! written: an image is untrusted input.

use crate::{PodError, Result};

/// The settings carried, as paths under /proc/sys.
pub const CARRIED: [&str; 10] = [
    "net/ipv4/ping_group_range",
    "net/ipv4/ip_local_port_range",
    "net/ipv4/ip_unprivileged_port_start",
    "net/ipv4/ip_forward",
    "net/ipv4/tcp_keepalive_time",
    "net/ipv4/tcp_keepalive_intvl",
    "net/ipv4/tcp_keepalive_probes",
    "net/ipv4/tcp_fin_timeout",
    "net/ipv4/tcp_syncookies",
    "net/core/somaxconn",
];

/// Longest value accepted from an image (the settings above are a number
/// or two).
const MAX_VALUE: usize = 64;

/// The calling thread's network namespace's values of [`CARRIED`] (those
/// this kernel has).
pub fn read() -> Vec<(String, String)> {
    CARRIED
        .iter()
        .filter_map(|name| {
            let v = std::fs::read_to_string(format!("/proc/sys/{name}")).ok()?;
            Some((name.to_string(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// Set `values` in the calling thread's network namespace. A name not in
/// [`CARRIED`] or a value that is no short line is refused; a value the
/// kernel refuses is reported, not fatal (another kernel's range).
pub fn write(values: &[(String, String)]) -> Result<()> {
    for (name, value) in values {
        if !CARRIED.contains(&name.as_str()) {
            return Err(PodError::Net(format!("the image sets {name:?}, not a setting cryopod carries")));
        }
        if value.len() > MAX_VALUE || !value.chars().all(|c| c.is_ascii_digit() || c == ' ' || c == '-') {
            return Err(PodError::Net(format!("the image sets {name} to {value:?}, not a number or two")));
        }
        let path = format!("/proc/sys/{name}");
        let now = std::fs::read_to_string(&path).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "));
        if now.as_deref().ok() == Some(value.as_str()) {
            continue;
        }
        if let Err(e) = std::fs::write(&path, value) {
            tracing::warn!("the pod's {name} was not set to {value} again: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_carried_settings_with_numbers_are_written() {
        let bad = |n: &str, v: &str| write(&[(n.to_string(), v.to_string())]).is_err();
        assert!(bad("kernel/core_pattern", "|/bin/sh"));
        assert!(bad("net/ipv4/../../kernel/modprobe", "1"));
        assert!(bad("net/ipv4/ping_group_range", "0 1\nx"));
        assert!(bad("net/core/somaxconn", &"1".repeat(65)));
        // This namespace's own values, written back unchanged.
        write(&read()).expect("the same values");
    }
}
