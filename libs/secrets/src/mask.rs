//! Personal data shown without being shown: a phone number as `+1•••••0100`, a message body as
//! `[body: 42 chars]`. Whatever may reach a log line or an error text goes through these, so
//! that neither ever carries a number or what someone wrote.

use std::fmt;

/// A phone number (or a WhatsApp id, or anything a sender is named by) that prints its first
/// two and last two digits only: `+1•••••••00`. Short or non-numeric values print as `•••`.
#[derive(Clone, Copy)]
pub struct MaskedPhone<'a>(pub &'a str);

impl fmt::Display for MaskedPhone<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits: Vec<char> = self.0.chars().filter(char::is_ascii_digit).collect();
        if digits.len() < 7 {
            return f.write_str("•••");
        }
        let plus = if self.0.trim_start().starts_with('+') {
            "+"
        } else {
            ""
        };
        let head: String = digits[..1].iter().collect();
        let tail: String = digits[digits.len() - 2..].iter().collect();
        let hidden = "•".repeat(digits.len() - 3);
        write!(f, "{plus}{head}{hidden}{tail}")
    }
}

impl fmt::Debug for MaskedPhone<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A message body (or any free text a person wrote, a name) that prints its length only:
/// `[body: 42 chars]`.
#[derive(Clone, Copy)]
pub struct MaskedText<'a>(pub &'a str);

impl fmt::Display for MaskedText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[body: {} chars]", self.0.chars().count())
    }
}

impl fmt::Debug for MaskedText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A phone number for a log line or an error text.
pub fn phone(value: &str) -> MaskedPhone<'_> {
    MaskedPhone(value)
}

/// A message body or a name for a log line or an error text.
pub fn text(value: &str) -> MaskedText<'_> {
    MaskedText(value)
}

/// `text` with every run of 7 or more digits (a phone number, however it is punctuated: `+1 415
/// 555 0100`, `14155550100`) masked; for a third party's error message quoted into a log line,
/// an error text or an event.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        // A number starts at a digit or a '+' before one, and runs over digits and the
        // punctuation people write numbers with.
        // … and not inside a word (an id like `ab12345678` is no number).
        let inside_word = i > 0 && chars[i - 1].is_alphanumeric();
        let starts = !inside_word
            && (chars[i].is_ascii_digit()
                || (chars[i] == '+' && chars.get(i + 1).is_some_and(char::is_ascii_digit)));
        if !starts {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let mut end = i + 1;
        while end < chars.len()
            && (chars[end].is_ascii_digit()
                || (matches!(chars[end], ' ' | '-' | '(' | ')' | '.')
                    && chars.get(end + 1).is_some_and(char::is_ascii_digit)))
        {
            end += 1;
        }
        let run: String = chars[i..end].iter().collect();
        if run.chars().filter(char::is_ascii_digit).count() >= 7 {
            out.push_str(&phone(&run).to_string());
        } else {
            out.push_str(&run);
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phone_shows_its_first_and_last_digits_only() {
        assert_eq!(phone("+14155550100").to_string(), "+1••••••••00");
        assert_eq!(format!("{:?}", phone("14155550100")), "1••••••••00");
        assert_eq!(phone("123").to_string(), "•••");
        assert_eq!(phone("").to_string(), "•••");
    }

    #[test]
    fn a_body_shows_its_length_only() {
        assert_eq!(text("Are you open today?").to_string(), "[body: 19 chars]");
        assert_eq!(format!("{:?}", text("ça")), "[body: 2 chars]");
    }

    #[test]
    fn numbers_in_free_text_are_masked_however_written() {
        let scrubbed =
            scrub("The 'To' number +1 415 555 0100 is not valid; 14155550100 neither (21211)");
        assert!(!scrubbed.contains("555"), "{scrubbed}");
        assert!(!scrubbed.contains("0100"), "{scrubbed}");
        assert!(scrubbed.contains("(21211)"), "{scrubbed}");
        assert!(scrubbed.starts_with("The 'To' number +1"), "{scrubbed}");
        assert_eq!(scrub("id ab12345678 ok"), "id ab12345678 ok");
    }
}
