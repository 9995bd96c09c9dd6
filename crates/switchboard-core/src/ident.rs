//! Identifiers: agent ids, agent types and capability names.
//!
//! One rule for all of them keeps them safe in URLs, topic names and logs:
//! 1 to [`MAX_LEN`] characters from `A-Z a-z 0-9 . _ : -`, starting with a
//! letter or digit. Dots are allowed because ids often carry a namespace
//! (`acme.codegen-1`).

/// The longest identifier accepted.
pub const MAX_LEN: usize = 128;

/// Checks `value` against the identifier rule; the error is the reason.
pub fn check(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_LEN {
        return Err(format!("must be at most {MAX_LEN} characters"));
    }
    let mut chars = value.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err("must start with a letter or a digit".into());
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "must contain only letters, digits, '.', '_', ':' and '-' (found {bad:?})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn accepts_and_refuses() {
        for ok in ["a", "agent-001", "acme.codegen_1", "x:y", "9lives"] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in ["", "-a", ".a", "a b", "a/b", "é", long.as_str()] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
