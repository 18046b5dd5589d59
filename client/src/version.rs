//! Release versions: which names are versions, and how they are ordered.

use std::cmp::Ordering;

use crate::layout::{NameError, SafeName};

/// Checks a release version as it is used in a store (a directory name
/// under `releases/`).
pub fn parse(text: &str) -> Result<SafeName, NameError> {
    SafeName::new("version", text)
}

/// Orders versions as systemd and Debian do for ours: fields separated by
/// `.`, `-`, `+` or `~`, compared as numbers when both are numbers and as
/// text otherwise; a version that runs out of fields first is older
/// (`1.0` < `1.0.1`).
pub fn compare(a: &str, b: &str) -> Ordering {
    let fields =
        |v: &str| -> Vec<String> { v.split(['.', '-', '+', '~']).map(str::to_owned).collect() };
    let (a_fields, b_fields) = (fields(a), fields(b));
    for (x, y) in a_fields.iter().zip(&b_fields) {
        let ordering = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if ordering.is_ne() {
            return ordering;
        }
    }
    a_fields.len().cmp(&b_fields.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn versions_order_numerically() {
        assert_eq!(compare("2026.1122.040506", "2026.1122.120506"), Less);
        assert_eq!(compare("1.10", "1.9"), Greater);
        assert_eq!(compare("1.0", "1.0"), Equal);
        assert_eq!(compare("1.0", "1.0.1"), Less);
    }

    #[test]
    fn a_version_is_a_safe_name() {
        assert!(parse("1.2.3").is_ok());
        assert!(parse("../1").is_err());
    }
}
