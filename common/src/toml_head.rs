//! One top-level key of an agent config that may not parse: the agent's CLI and the osquery
//! extension both have to find the running agent's `state_dir` (and `host_id`) after an
//! operator's bad edit, and must find the same one the agent used.

use toml::Value;

/// A top-level key read from a file that may not parse (see [`top_level`]).
#[derive(Debug, Clone, PartialEq)]
pub enum TopLevel {
    Found(Value),
    /// The key is certainly not set: the default applies.
    Absent,
    /// The key's own line is broken, so its value cannot be known.
    Unreadable,
}

/// One top-level key of a TOML text, even when the text does not parse (an operator's bad edit):
/// the CLI still has to find the running agent's `state_dir` to show or stop it.
///
/// TOML puts every top-level key before the first table header, so a syntax error further down
/// cannot change it: that section alone is parsed, and if the error is in it, the key's own line.
pub fn top_level(text: &str, key: &str) -> TopLevel {
    if let Ok(table) = text.parse::<toml::Table>() {
        return table
            .get(key)
            .cloned()
            .map_or(TopLevel::Absent, TopLevel::Found);
    }
    let head: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .collect();
    if let Ok(table) = head.join("\n").parse::<toml::Table>() {
        return table
            .get(key)
            .cloned()
            .map_or(TopLevel::Absent, TopLevel::Found);
    }
    let quoted = [key.to_string(), format!("\"{key}\""), format!("'{key}'")];
    let mut own_lines = head.iter().filter(|l| {
        let l = l.trim_start();
        quoted.iter().any(|q| {
            l.strip_prefix(q.as_str())
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    });
    match own_lines.next() {
        None => TopLevel::Absent,
        Some(line) => match line.parse::<toml::Table>() {
            Ok(t) => t
                .get(key)
                .cloned()
                .map_or(TopLevel::Unreadable, TopLevel::Found),
            Err(_) => TopLevel::Unreadable,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{top_level, TopLevel};

    fn dir(s: &str) -> TopLevel {
        TopLevel::Found(toml::Value::String(s.into()))
    }

    #[test]
    fn a_valid_file_gives_the_key_or_absent() {
        assert_eq!(
            top_level("state_dir = \"s\"\n[a]\nb = 1\n", "state_dir"),
            dir("s")
        );
        assert_eq!(
            top_level("host_id = \"h\"\n", "state_dir"),
            TopLevel::Absent
        );
    }

    #[test]
    fn a_syntax_error_in_a_table_leaves_the_top_level_readable() {
        let text = "# notes\nstate_dir = \"/var/lib/x\"\n[sink]\ntype = \"file\"\npath = \n";
        assert_eq!(top_level(text, "state_dir"), dir("/var/lib/x"));
        // A key that sits inside a table is not the top-level one.
        let text = "[sources.a]\nstate_dir = \"no\"\noops\n";
        assert_eq!(top_level(text, "state_dir"), TopLevel::Absent);
    }

    #[test]
    fn a_syntax_error_at_the_top_still_finds_the_keys_own_line() {
        let text = "host_id = \"h\nstate_dir = 'st' # here\n[sink]\n";
        assert_eq!(top_level(text, "state_dir"), dir("st"));
        assert_eq!(
            top_level("\"state_dir\" = \"q\"\nbad =\n", "state_dir"),
            dir("q")
        );
        assert_eq!(
            top_level("bad =\nhost_id = \"h\"\n", "state_dir"),
            TopLevel::Absent
        );
    }

    #[test]
    fn a_broken_line_of_the_key_itself_is_unreadable() {
        assert_eq!(
            top_level("state_dir = \"unterminated\n[sink]\n", "state_dir"),
            TopLevel::Unreadable
        );
    }
}
