//! Text from the target (thread names, symbols, perf-map entries, paths) made safe to
//! show: every control character, and the invisible Unicode controls that reorder or
//! hide text, is written as an escape (`\x1b`, `\u{202e}`), so a name can neither drive
//! root's terminal, forge a line of the summary, break a folded line, nor make the SVG
//! ill-formed. Applied where such text enters waitprof, so every output gets it.

use std::borrow::Cow;

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// `s` with its control characters escaped; borrowed when there are none.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if !needs_escape(c) => out.push(c),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// Bytes from the target (a kernel `comm`, a file) as printable text.
pub fn printable_bytes(b: &[u8]) -> String {
    printable(&String::from_utf8_lossy(b)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert!(matches!(printable("main.run"), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\x1b[2Jb\nc\rd\x7f"),
            "a\\x1b[2Jb\\x0ac\\x0dd\\x7f"
        );
        assert_eq!(printable("ab\u{202e}cd\u{85}"), "ab\\u{202e}cd\\x85");
        assert_eq!(printable("Größe::λ"), "Größe::λ");
        assert_eq!(printable_bytes(b"w\xff\x07"), "w\u{fffd}\\x07");
    }
}
