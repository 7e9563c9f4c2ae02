//! The one rule PIPEFORCE's names follow: a service, a namespace and a job each become a
//! Kubernetes object name and part of a host name, so each must be a DNS-1123 label.
//!
//! The configuration checks `PIPEFORCE_SERVICE` and `PIPEFORCE_NAMESPACE` with it, and the
//! deploy tool the job names it is given or makes. (The template's hooks check the answers
//! with the same rule, written in Rhai.)

/// The rule in words, for error messages: "expected {DNS_LABEL_RULE}".
pub const DNS_LABEL_RULE: &str = "a DNS-1123 label: at most 63 lowercase letters, digits and \
     '-', starting with a letter and ending with a letter or digit, e.g. orders";

/// The longest DNS-1123 label.
pub const DNS_LABEL_MAX_LEN: usize = 63;

/// Whether `name` is a DNS-1123 label: 1 to 63 lowercase letters, digits and `-`, starting
/// with a letter and ending with a letter or digit.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=DNS_LABEL_MAX_LEN).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_short_lowercase_and_start_with_a_letter() {
        let longest = format!("a{}", "0".repeat(62));
        for (name, valid) in [
            ("orders", true),
            ("a", true),
            ("order-2", true),
            (longest.as_str(), true),
            ("", false),
            ("Orders", false),
            ("2orders", false),
            ("-orders", false),
            ("orders-", false),
            ("or_ders", false),
            ("or.ders", false),
        ] {
            assert_eq!(is_dns_label(name), valid, "{name:?}");
        }
        assert!(!is_dns_label(&format!("{longest}0")));
    }
}
