//! osquery packs that also switch the agent's sources on: read and placed on a host by the
//! shared crate (the osquery extension shows the same sources), tested here against the agent's
//! own config checks.

pub use log_sensor_common::packs::*;

#[cfg(test)]
mod tests {
    use super::*;
    use log_sensor_common::template::{Context, Facts};
    use std::collections::BTreeMap;
    use std::path::Path;
    use toml::{Table, Value};

    fn facts(os: &str, id: &str, version: &str, like: &[&str]) -> Facts {
        Facts {
            hostname: "h".into(),
            fqdn: Some("h.example".into()),
            os: os.into(),
            distro_id: id.into(),
            distro_version: version.into(),
            distro_like: like.iter().map(|s| s.to_string()).collect(),
            arch: "x86_64".into(),
            machine_id: String::new(),
        }
    }

    pub fn debian() -> Facts {
        facts("linux", "debian", "12", &[])
    }
    pub fn ubuntu() -> Facts {
        facts("linux", "ubuntu", "24.04", &["debian"])
    }
    pub fn rocky() -> Facts {
        facts("linux", "rocky", "9.4", &["rhel", "centos", "fedora"])
    }
    pub fn macos() -> Facts {
        facts("darwin", "", "", &[])
    }

    fn ctx(host: Facts, vars: &str) -> Context {
        Context {
            host,
            env: BTreeMap::new(),
            vars: vars.parse().unwrap(),
        }
    }

    #[test]
    fn platforms_as_osquery_reads_them() {
        assert!(platform_matches("linux", &debian()));
        assert!(platform_matches("posix", &macos()));
        assert!(platform_matches("darwin,linux", &macos()));
        assert!(!platform_matches("linux", &macos()));
        assert!(platform_matches("ubuntu", &ubuntu()));
        assert!(platform_matches("debian", &ubuntu()), "ID_LIKE counts");
        assert!(platform_matches("centos", &rocky()));
        assert!(!platform_matches("centos", &debian()));
        assert!(platform_matches("any", &macos()));
    }

    fn shipped(name: &str) -> Pack {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packs")
            .join(format!("{name}.json"));
        Pack::read(&p).unwrap_or_else(|e| panic!("{e}"))
    }

    fn paths(placed: &Placed, source: &str) -> Vec<String> {
        placed.sources[source]["paths"]
            .as_array()
            .unwrap_or_else(|| panic!("{source} has no paths: {:?}", placed.sources))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    /// Every shipped pack, on each kind of host, gives sources the agent accepts.
    #[test]
    fn every_shipped_pack_places_valid_sources_on_every_kind_of_host() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packs");
        let packs = available_packs(&[dir]);
        assert!(packs.len() >= 5, "{packs:?}");
        for (name, path) in packs {
            let pack = Pack::read(&path).unwrap();
            for host in [debian(), ubuntu(), rocky(), macos()] {
                let placed = pack.place(&ctx(host.clone(), "")).unwrap();
                for (s, v) in &placed.sources {
                    let t = v.as_table().unwrap();
                    for key in PLACEMENT_KEYS {
                        assert!(!t.contains_key(key), "{name}.{s}: {key} left in");
                    }
                    let text = v.to_string();
                    assert!(
                        !text.contains("{{") && !text.contains("{%"),
                        "{name}.{s}: {text}"
                    );
                }
                let mut cfg = Table::new();
                cfg.insert("sources".into(), Value::Table(placed.sources.clone()));
                crate::config::Config::from_table(Path::new("/etc/ls/agent.toml"), &cfg)
                    .unwrap_or_else(|e| panic!("{name} on {host:?}: {e}"));
            }
        }
    }

    #[test]
    fn the_system_logs_pack_follows_each_layout() {
        let pack = shipped("linux_syslog");
        let deb = pack.place(&ctx(debian(), "")).unwrap();
        assert!(deb.refused.is_none());
        assert!(paths(&deb, "syslog").contains(&"/var/log/syslog".to_string()));
        assert!(!paths(&deb, "syslog").iter().any(|p| p.contains("messages")));
        assert!(paths(&deb, "auth").contains(&"/var/log/auth.log".to_string()));
        let rhel = pack.place(&ctx(rocky(), "")).unwrap();
        assert!(paths(&rhel, "syslog").contains(&"/var/log/messages".to_string()));
        assert!(!paths(&rhel, "syslog").iter().any(|p| p.contains("/syslog")));
        assert!(paths(&rhel, "auth").contains(&"/var/log/secure".to_string()));
        let mac = pack.place(&ctx(macos(), "")).unwrap();
        assert!(
            mac.refused.as_deref().unwrap().contains("darwin"),
            "{:?}",
            mac.refused
        );
        assert!(mac.sources.is_empty());

        let mac = shipped("macos_system").place(&ctx(macos(), "")).unwrap();
        assert!(paths(&mac, "system").contains(&"/var/log/system.log".to_string()));
        assert!(paths(&mac, "install").contains(&"/var/log/install.log".to_string()));
        let not_here = shipped("macos_system").place(&ctx(debian(), "")).unwrap();
        assert!(not_here.refused.is_some());
    }

    #[test]
    fn nginx_and_java_follow_the_layout_and_the_operators_vars() {
        let nginx = shipped("nginx");
        let deb = nginx.place(&ctx(debian(), "")).unwrap();
        assert!(paths(&deb, "nginx_access").contains(&"/var/log/nginx/access.log".to_string()));
        let custom = nginx
            .place(&ctx(rocky(), "nginx_logs = \"/srv/nginx/logs\""))
            .unwrap();
        assert!(paths(&custom, "nginx_error").contains(&"/srv/nginx/logs/error.log".to_string()));
        // Homebrew's prefix differs between Apple silicon and Intel Macs.
        let mut arm = macos();
        arm.arch = "aarch64".into();
        let mac = nginx.place(&ctx(arm, "")).unwrap();
        assert!(paths(&mac, "nginx_access")
            .contains(&"/opt/homebrew/var/log/nginx/access.log".to_string()));
        let intel = nginx.place(&ctx(macos(), "")).unwrap();
        assert!(paths(&intel, "nginx_error")
            .contains(&"/usr/local/var/log/nginx/error.log".to_string()));
        let java = shipped("java_app");
        let deb = java.place(&ctx(debian(), "")).unwrap();
        assert!(paths(&deb, "java_app").contains(&"/var/log/app/*.log".to_string()));
        let custom = java
            .place(&ctx(debian(), "java_app_logs = \"/opt/shop/logs\""))
            .unwrap();
        assert!(paths(&custom, "java_app").contains(&"/opt/shop/logs/*.log".to_string()));
    }

    #[test]
    fn a_bad_condition_or_template_names_the_pack_source_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("web.json");
        std::fs::write(
            &p,
            r#"{"queries": {}, "log_sensor": {"sources": {
                 "a": {"paths": ["{{ vars.nope }}/x.log"]},
                 "b": {"paths": ["/b"], "when": "host.os =="}}}}"#,
        )
        .unwrap();
        let e = Pack::read(&p)
            .unwrap()
            .place(&ctx(debian(), ""))
            .unwrap_err();
        assert!(
            e.contains("web.json source a paths") && e.contains("undefined"),
            "{e}"
        );
        std::fs::write(
            &p,
            r#"{"log_sensor": {"sources": {"b": {"paths": ["/b"], "when": "host.os =="}}}}"#,
        )
        .unwrap();
        let e = Pack::read(&p)
            .unwrap()
            .place(&ctx(debian(), ""))
            .unwrap_err();
        assert!(e.contains("source b when"), "{e}");
    }
}
