//! `type = "regex"`: the named groups of `pattern` → `fields` (as text; a group that took no
//! part in the match is left out). A line the pattern does not match passes unchanged.

use super::fields::{self, merge, text};
use super::{Draft, Fault, Transform, Verdict};
use regex::bytes::{CaptureLocations, Regex};
use serde_json::Map;

pub struct RegexParser {
    re: Regex,
    /// Group index → name, for the named groups only, sorted by name.
    names: Vec<(usize, String)>,
    /// Each of `names` as a JSON string, for [`fields::Writer`].
    keys: Vec<Vec<u8>>,
    /// Reused across records: capture positions without an allocation per line.
    locs: CaptureLocations,
    fault: Fault,
}

impl RegexParser {
    pub fn new(re: &Regex) -> RegexParser {
        let mut names: Vec<(usize, String)> = re
            .capture_names()
            .enumerate()
            .filter_map(|(i, n)| n.map(|n| (i, n.to_string())))
            .collect();
        names.sort_by(|a, b| a.1.cmp(&b.1));
        RegexParser {
            locs: re.capture_locations(),
            re: re.clone(),
            keys: names.iter().map(|(_, n)| fields::key(n)).collect(),
            names,
            fault: Fault::None,
        }
    }
}

impl Transform for RegexParser {
    fn describe(&self) -> String {
        format!("regex {:?}", self.re.as_str())
    }

    fn apply(&mut self, rec: &mut Draft<'_>) -> Verdict {
        if self.re.captures_read(&mut self.locs, &rec.bytes).is_none() {
            self.fault = Fault::Unparsed;
            return Verdict::Keep;
        }
        self.fault = Fault::None;
        if rec.fields.is_none() {
            let mut w = fields::Writer::new(rec.bytes.len() + 16 * self.keys.len());
            for ((i, _), key) in self.names.iter().zip(&self.keys) {
                if let Some((s, e)) = self.locs.get(*i) {
                    w.text(key, &rec.bytes[s..e]);
                }
            }
            w.finish(rec);
            return Verdict::Keep;
        }
        let mut found = Map::new();
        for (i, name) in &self.names {
            if let Some((s, e)) = self.locs.get(*i) {
                found.insert(name.clone(), text(&rec.bytes[s..e]));
            }
        }
        merge(rec, found);
        Verdict::Keep
    }

    fn fault(&self) -> Fault {
        self.fault
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::tests::{draft, fields_of, meta};

    /// The issue's pattern, as written in its example config.
    pub const NGINX: &str = r#"^(?P<client>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+)[^"]*" (?P<status>\d{3}) (?P<bytes>\d+)"#;

    #[test]
    fn nginx_combined_lines_parse_into_fields() {
        let meta = meta();
        let mut t = RegexParser::new(&Regex::new(NGINX).unwrap());
        let line = br#"203.0.113.9 - alice [05/Mar/2024:10:11:12 +0000] "GET /api/v1/items?page=2 HTTP/1.1" 200 5123 "https://example.com/" "Mozilla/5.0 (X11; Linux x86_64)""#;
        let mut d = draft(&meta, line);
        assert_eq!(t.apply(&mut d), Verdict::Keep);
        assert_eq!(t.fault(), Fault::None);
        assert_eq!(&*d.bytes, line, "the message stays the line");
        let f = fields_of(&d);
        assert_eq!(f["client"], "203.0.113.9");
        assert_eq!(f["time"], "05/Mar/2024:10:11:12 +0000");
        assert_eq!(f["method"], "GET");
        assert_eq!(f["path"], "/api/v1/items?page=2");
        assert_eq!(f["status"], "200");
        assert_eq!(f["bytes"], "5123");
        // Written straight out, it reads as the map would have written it: sorted, compact.
        let via_map = serde_json::to_vec(&f).unwrap();
        assert_eq!(d.fields.as_deref(), Some(&via_map[..]));
    }

    #[test]
    fn a_line_that_does_not_match_passes_unchanged() {
        let meta = meta();
        let mut t = RegexParser::new(&Regex::new(NGINX).unwrap());
        let line = b"2024/03/05 10:11:12 [error] 31#31: *1 open() failed";
        let mut d = draft(&meta, line);
        assert_eq!(t.apply(&mut d), Verdict::Keep);
        assert_eq!(t.fault(), Fault::Unparsed);
        assert_eq!(&*d.bytes, line);
        assert!(d.fields.is_none());
    }
}
