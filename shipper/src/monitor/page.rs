//! `/`: one self-contained HTML page (inline CSS and script, no external assets) that fetches
//! `/api/v1/status` every 2 s and renders it. Kept in `page.html` so it reads and diffs as HTML.

pub const PAGE: &str = include_str!("page.html");

/// Only inline script and style, and requests back to this server: the page works offline and
/// nothing a log line contains can make it load or run anything else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let lower = PAGE.to_ascii_lowercase();
        for banned in [
            "http://", "https://", "//cdn", "<link", "src=", "@import", "url(",
        ] {
            assert!(!lower.contains(banned), "page.html contains {banned:?}");
        }
    }

    #[test]
    fn the_page_never_parses_data_as_html() {
        // Paths and alert details come from files anyone may name: text only.
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!PAGE.contains(banned), "page.html uses {banned}");
        }
        assert!(PAGE.contains("api/v1/status"));
    }
}
