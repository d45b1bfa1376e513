//! Text from the cluster, made safe to print on the developer's terminal: whoever may write
//! an event, an annotation or a field (a teammate, a controller, a hostile pod's maker)
//! must not be able to move the cursor, set the window title or reorder what is shown.

/// `text` with every control character and bidirectional override escaped (`\u{1b}`).
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || is_bidi_control(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_overrides_are_shown_not_obeyed() {
        assert_eq!(
            printable("quota\u{1b}]0;PWNED\u{7}"),
            "quota\\u{1b}]0;PWNED\\u{7}"
        );
        assert_eq!(printable("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(
            printable("exceeded quota: pods=2, é"),
            "exceeded quota: pods=2, é"
        );
    }
}
