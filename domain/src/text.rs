//! Free text from callers (reasons, display names, label values): bounded,
//! and free of control characters, so it is stored the same on every
//! backend (PostgreSQL refuses NUL where SQLite keeps it) and cannot drive
//! a terminal when printed.

use crate::FieldError;

/// The longest reason (cancel, suspend) accepted, in characters.
pub const MAX_REASON_CHARS: usize = 512;

/// Whether `c` may appear in free text: no C0/C1 controls (NUL, ESC,
/// newlines, DEL) and no bidirectional overrides or isolates, which make
/// text print in another order than it is stored.
pub fn is_printable(c: char) -> bool {
    !c.is_control() && !matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Checks `value` for `field`: at most `max_chars` characters, all printable.
pub fn check(field: &str, value: &str, max_chars: usize) -> Result<(), FieldError> {
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(FieldError::new(
            field,
            format!("must be at most {max_chars} characters, got {chars}"),
        ));
    }
    if let Some((i, c)) = value.char_indices().find(|(_, c)| !is_printable(*c)) {
        return Err(FieldError::new(
            field,
            format!(
                "contains the control character U+{:04X} at byte {i}; only printable text is accepted",
                c as u32
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_length_are_refused_by_field() {
        assert!(check("reason", "margin call: desk 7 — 残高", 64).is_ok());
        for bad in [
            "a\0b",
            "\x1b[31mred",
            "line\nbreak",
            "tab\there",
            "\u{202E}txt",
            "\u{7f}",
        ] {
            let e = check("reason", bad, 64).unwrap_err();
            assert_eq!(e.field, "reason");
            assert!(e.reason.contains("control character"), "{e}");
        }
        let e = check("reason", &"x".repeat(65), 64).unwrap_err();
        assert!(e.reason.contains("at most 64"), "{e}");
    }
}
