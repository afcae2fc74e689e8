//! An error and its causes on one line, as the three binaries print a failure. Our typed errors
//! quote their source in their own text (`cannot read config file F: No such file …`), so a
//! cause already in the line is not repeated: `{:#}` printed it twice, and a database error
//! wrapped twice three times.

/// `error: cause: cause …`, each cause once.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text = format!("{text}: {t}");
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wraps(&'static str, Option<std::io::Error>);

    impl std::fmt::Display for Wraps {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)?;
            match &self.1 {
                Some(e) if self.0.ends_with("quoting") => write!(f, ": {e}"),
                _ => Ok(()),
            }
        }
    }

    impl std::error::Error for Wraps {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_ref().map(|e| e as _)
        }
    }

    #[test]
    fn a_cause_is_said_once_whether_or_not_the_error_quotes_it() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let quoting = Wraps("cannot read F, quoting", Some(io()));
        assert_eq!(error_text(&quoting), "cannot read F, quoting: no such file");
        let silent = Wraps("cannot read F", Some(io()));
        assert_eq!(error_text(&silent), "cannot read F: no such file");
    }
}
