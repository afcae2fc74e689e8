//! Routes: which sinks each source's records go to, checked against the sinks, and the sources
//! grouped by the set of sinks they go to.
//!
//! A source's `sinks = [...]` (the osquery outbox's `[osquery] sinks`) names sinks of
//! `[sinks.NAME]` (or `default`, the `[sink]`); without it a source goes to every sink. Sources
//! with the same set form one [`Group`]: at run time each group is its own pipeline whose
//! batches are committed once every sink of its set has acknowledged them, so a sink that is
//! down holds back exactly the groups routed to it.

use super::NamedSink;
use crate::config::syslog::SyslogSource;
use crate::config::{Config, ConfigIssue, Source};
use std::collections::{BTreeMap, BTreeSet};

/// The source name the osquery outbox's records carry.
pub const OSQUERY: &str = "osquery";

/// Sources that go to the same set of sinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Indices into [`Config::sinks`], ascending.
    pub sinks: Vec<usize>,
    /// The file sources of the group, by name.
    pub sources: Vec<String>,
    /// The syslog (network) sources of the group, by name.
    pub syslog_sources: Vec<String>,
    /// Whether the osquery outbox goes with this group.
    pub osquery: bool,
}

/// Each `sources.X.sinks` (file and syslog sources) and `osquery.sinks` names known sinks, at
/// least one. A name in `invalid` is a sink defined with an error: known (its own issues are
/// enough), though it is not among `sinks`.
pub(in crate::config) fn check(
    sources: &[Source],
    syslog_sources: &[SyslogSource],
    osquery: Option<&[String]>,
    sinks: &[NamedSink],
    invalid: &BTreeSet<String>,
    issues: &mut Vec<ConfigIssue>,
) {
    let named = sources
        .iter()
        .filter_map(|s| Some((format!("sources.{}.sinks", s.name), s.sinks.as_deref()?)))
        .chain(
            syslog_sources
                .iter()
                .filter_map(|s| Some((format!("sources.{}.sinks", s.name), s.sinks.as_deref()?))),
        )
        .chain(osquery.map(|o| ("osquery.sinks".to_string(), o)));
    let known: BTreeSet<&str> = sinks
        .iter()
        .map(|s| s.name.as_str())
        .chain(invalid.iter().map(String::as_str))
        .collect();
    for (key, names) in named {
        if names.is_empty() {
            issues.push(ConfigIssue {
                key,
                message: "names no sink; leave it out to ship to every sink".into(),
            });
            continue;
        }
        for n in names {
            if !known.contains(n.as_str()) {
                let all: Vec<&str> = known.iter().copied().collect();
                issues.push(ConfigIssue {
                    key: key.clone(),
                    message: format!("unknown sink {n:?} (the sinks are: {})", all.join(", ")),
                });
            }
        }
    }
}

/// The indices of the sinks `names` route to; None: all of them.
fn resolve(names: Option<&[String]>, sinks: &[NamedSink]) -> Vec<usize> {
    (0..sinks.len())
        .filter(|&i| names.is_none_or(|n| n.iter().any(|x| *x == sinks[i].name)))
        .collect()
}

/// The group of a source routed by `names` (None: every sink), made on first use.
fn group_of<'a>(
    by_set: &'a mut BTreeMap<Vec<usize>, Group>,
    names: Option<&[String]>,
    sinks: &[NamedSink],
) -> &'a mut Group {
    let set = resolve(names, sinks);
    by_set.entry(set.clone()).or_insert_with(|| Group {
        sinks: set,
        sources: Vec::new(),
        syslog_sources: Vec::new(),
        osquery: false,
    })
}

/// The groups of a valid config, in the order of their sink sets. The osquery outbox always
/// has one (it is read whether or not osquery runs).
pub fn groups(cfg: &Config) -> Vec<Group> {
    let mut by_set: BTreeMap<Vec<usize>, Group> = BTreeMap::new();
    for s in &cfg.sources {
        group_of(&mut by_set, s.sinks.as_deref(), &cfg.sinks)
            .sources
            .push(s.name.clone());
    }
    for s in &cfg.syslog_sources {
        group_of(&mut by_set, s.sinks.as_deref(), &cfg.sinks)
            .syslog_sources
            .push(s.name.clone());
    }
    group_of(&mut by_set, cfg.osquery_sinks.as_deref(), &cfg.sinks).osquery = true;
    by_set.into_values().collect()
}

/// Why a reload cannot take `new`'s routes while the agent runs, if it cannot: each group is a
/// pipeline with its own inputs, so the sinks' names and the groups stay as started. A sink's
/// options may change (it is rebuilt between batches), and a source may come or go within a
/// group that exists.
pub fn unchangeable(old: &Config, new: &Config) -> Option<String> {
    let names = |c: &Config| c.sinks.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    if names(old) != names(new) {
        return Some(format!(
            "the sinks cannot be added, removed or renamed while the agent runs ({} -> {}); restart it",
            names(old).join(", "),
            names(new).join(", ")
        ));
    }
    let (before, after) = (groups(old), groups(new));
    let set_of = |gs: &[Group], source: &str| {
        gs.iter()
            .find(|g| {
                g.sources
                    .iter()
                    .chain(&g.syslog_sources)
                    .any(|s| s == source)
            })
            .map(|g| g.sinks.clone())
    };
    for g in &after {
        for s in g.sources.iter().chain(&g.syslog_sources) {
            let moved = match set_of(&before, s) {
                Some(set) => set != g.sinks,
                None => !before.iter().any(|b| b.sinks == g.sinks),
            };
            if moved {
                return Some(format!(
                    "sources.{s}.sinks: a source cannot move to other sinks, nor start a new set of sinks, while the agent runs; restart it"
                ));
            }
        }
    }
    let osq = |gs: &[Group]| gs.iter().find(|g| g.osquery).map(|g| g.sinks.clone());
    if osq(&before) != osq(&after) {
        return Some("osquery.sinks cannot change while the agent runs; restart it".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const TWO: &str = r#"
[sinks.central]
type = "stdout"
[sinks.archive]
type = "file"
path = "/tmp/archive.ndjson"
[sources.auth]
paths = ["/var/log/auth.log"]
sinks = ["central", "archive"]
[sources.app]
paths = ["/var/log/app.log"]
sinks = ["archive"]
[sources.all]
paths = ["/var/log/all.log"]
"#;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/ls/agent.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn sources_are_grouped_by_their_set_of_sinks_default_every_sink() {
        let c = parse(TWO).unwrap();
        let names: Vec<&str> = c.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["archive", "central"], "name order");
        let g = groups(&c);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].sinks, [0]);
        assert_eq!(g[0].sources, ["app"]);
        assert!(!g[0].osquery);
        assert_eq!(g[1].sinks, [0, 1]);
        assert_eq!(g[1].sources, ["all", "auth"]);
        assert!(g[1].osquery, "the outbox goes to every sink by default");
    }

    #[test]
    fn syslog_sources_route_like_file_sources() {
        let net = "[sources.net]\ntype = \"syslog\"\nlisten = [\"udp://127.0.0.1:5514\"]\n";
        let c = parse(&format!("{TWO}{net}sinks = [\"archive\"]\n")).unwrap();
        let g = groups(&c);
        assert_eq!(g[0].sinks, [0]);
        assert_eq!(g[0].sources, ["app"]);
        assert_eq!(g[0].syslog_sources, ["net"]);
        let e = parse(&format!("{TWO}{net}sinks = [\"nope\"]\n")).unwrap_err();
        assert!(
            e.contains("sources.net.sinks: unknown sink \"nope\""),
            "{e}"
        );
    }

    #[test]
    fn the_one_sink_form_is_the_sink_named_default() {
        let c = parse("[sink]\ntype = \"stdout\"\n[sources.a]\npaths = [\"/x\"]\n").unwrap();
        assert_eq!(c.sinks.len(), 1);
        assert_eq!(c.sinks[0].name, crate::config::DEFAULT_SINK);
        let c = parse("[sources.a]\npaths = [\"/x\"]\nsinks = [\"default\"]\n").unwrap();
        assert_eq!(groups(&c).len(), 1);
    }

    #[test]
    fn bad_routes_name_the_key_at_fault() {
        let e = parse(&format!("{TWO}\n[osquery]\nsinks = []\n")).unwrap_err();
        assert!(e.contains("osquery.sinks: names no sink"), "{e}");
        let e = parse(&TWO.replace("[\"archive\"]", "[\"archiv\"]")).unwrap_err();
        assert!(
            e.contains(
                "sources.app.sinks: unknown sink \"archiv\" (the sinks are: archive, central)"
            ),
            "{e}"
        );
        let e = parse(&format!("{TWO}\n[sink]\ntype = \"stdout\"\n")).unwrap_err();
        assert!(e.contains("sink: [sink] and [sinks.*] are both set"), "{e}");
        let e = parse("[sinks.a]\ntype = \"file\"\n").unwrap_err();
        assert!(e.contains("sinks.a.path: required for a file sink"), "{e}");
        let e = parse("[sinks.\"a.b\"]\ntype = \"stdout\"\n").unwrap_err();
        assert!(e.contains("sinks.a.b: sink names use letters"), "{e}");
        let e = parse("[sinks]\n").unwrap_err();
        assert!(e.contains("sinks: names no sink"), "{e}");
    }

    #[test]
    fn a_defined_but_invalid_sink_is_not_also_unknown() {
        let e = parse(&format!(
            "{TWO}[osquery]\nsinks = [\"archive\", \"broken\"]\n[sinks.broken]\ntype = \"file\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("sinks.broken.path: required"), "{e}");
        assert!(!e.contains("unknown sink"), "{e}");
        let e = parse(&format!(
            "{TWO}[osquery]\nsinks = [\"nope\"]\n[sinks.broken]\ntype = \"file\"\n"
        ))
        .unwrap_err();
        assert!(
            e.contains(
                "osquery.sinks: unknown sink \"nope\" (the sinks are: archive, broken, central)"
            ),
            "{e}"
        );
        // An invalid [sink] is the sink named default.
        let e =
            parse("[sink]\ntype = \"fil\"\n[sources.a]\npaths = [\"/x\"]\nsinks = [\"default\"]\n")
                .unwrap_err();
        assert!(e.contains("sink.type: unknown sink type"), "{e}");
        assert!(!e.contains("unknown sink \""), "{e}");
        // With [sink] and [sinks.*] both set, that is the one error.
        let e = parse(&format!("{TWO}[sink]\ntype = \"stdout\"\n")).unwrap_err();
        assert!(!e.contains("unknown sink \""), "{e}");
    }

    #[test]
    fn a_reload_may_change_a_sink_and_add_a_source_but_not_the_groups() {
        let old = parse(TWO).unwrap();
        let changed = TWO.replace("/tmp/archive.ndjson", "/tmp/other.ndjson");
        assert_eq!(unchangeable(&old, &parse(&changed).unwrap()), None);
        let more = format!("{TWO}\n[sources.new]\npaths = [\"/n\"]\nsinks = [\"archive\"]\n");
        assert_eq!(unchangeable(&old, &parse(&more).unwrap()), None);
        let moved = TWO.replace("sinks = [\"archive\"]", "sinks = [\"central\"]");
        let why = unchangeable(&old, &parse(&moved).unwrap()).unwrap();
        assert!(why.starts_with("sources.app.sinks"), "{why}");
        let renamed = TWO.replace("central", "main");
        let why = unchangeable(&old, &parse(&renamed).unwrap()).unwrap();
        assert!(why.contains("archive, central -> archive, main"), "{why}");
    }
}
