//! The .deb and .rpm packages, built with cargo-deb and cargo-generate-rpm from the binaries this
//! test build made, installed into this machine with the real dpkg, upgraded and purged.
//!
//! One test function does the whole sequence: the packages own fixed paths (/usr/bin,
//! /etc/log-sensor, /var/lib/...), so two tests installing them at once would clash. A guard
//! stops the agent and purges the packages however the test ends.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use support::*;

const PACKAGES: [&str; 3] = [
    "log-sensor",
    "log-sensor-collector",
    "log-sensor-osquery-extension",
];
const CONFIG: &str = "/etc/log-sensor/log-sensor.toml";
const EXT: &str = "/usr/lib/log-sensor/log_sensor.ext";
const LOAD: &str = "/etc/osquery/extensions.load";
const COLLECTOR_DIR: &str = "/var/lib/log-sensor-collector";
const COLLECTOR_USER: &str = "log-sensor-collector";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e} (run tests/setup.sh)"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn dpkg(args: &[&str]) -> Output {
    Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .expect("dpkg")
}

/// Stops an agent the test started and purges the packages, however the test ends; restores
/// osquery's extensions.load as it was.
struct Installed {
    load_before: Option<String>,
}

impl Installed {
    fn new() -> Installed {
        // A run killed midway may have left them installed.
        Installed::purge();
        let load_before = std::fs::read_to_string(LOAD).ok();
        Installed { load_before }
    }

    fn purge() {
        if Path::new("/usr/bin/log-sensor").exists() {
            let _ = Command::new("/usr/bin/log-sensor")
                .args(["-c", CONFIG, "stop"])
                .stdin(Stdio::null())
                .output();
        }
        let mut args = vec!["--purge"];
        args.extend(PACKAGES);
        let _ = dpkg(&args);
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        Installed::purge();
        match &self.load_before {
            Some(t) => {
                let _ = std::fs::write(LOAD, t);
            }
            None => {
                let _ = std::fs::remove_file(LOAD);
                let _ = std::fs::remove_dir("/etc/osquery");
            }
        }
    }
}

/// The packages of one version, built by the README's command from the binaries this test
/// build made (no release build).
fn build_packages(out: &Path, version: &str, rpm: bool) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let bins = bin("log-sensor").parent().unwrap().to_path_buf();
    run(
        "packaging/build.sh",
        Command::new(workspace().join("packaging/build.sh"))
            .arg("--binaries")
            .arg(&bins)
            .args(["--version", version, "--fast"])
            .args(if rpm { &[][..] } else { &["--deb-only"][..] })
            .arg("--out")
            .arg(out),
    );
    let find = |ext: &str| -> Vec<PathBuf> {
        PACKAGES
            .iter()
            .map(|p| {
                std::fs::read_dir(out)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .find(|f| {
                        let n = f.file_name().unwrap().to_string_lossy().into_owned();
                        n.ends_with(ext)
                            && (n.starts_with(&format!("{p}_")) || n.starts_with(&format!("{p}-0")))
                    })
                    .unwrap_or_else(|| panic!("no {ext} of {p} in {}", out.display()))
            })
            .collect()
    };
    (find(".deb"), if rpm { find(".rpm") } else { Vec::new() })
}

fn install(debs: &[PathBuf]) -> Output {
    let mut c = Command::new("dpkg");
    c.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["--force-confdef", "--force-confold", "-i"])
        .args(debs);
    run("dpkg -i", &mut c)
}

fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| uid.to_string())
}

/// `(mode, owner)` of a path, without following a symlink.
fn mode_owner(p: &str) -> (u32, String) {
    let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    (md.permissions().mode() & 0o7777, user_name(md.uid()))
}

/// Every path the packages install, with the mode and owner it must have.
fn expected() -> BTreeMap<&'static str, (u32, &'static str)> {
    BTreeMap::from([
        ("/usr/bin/log-sensor", (0o755, "root")),
        (CONFIG, (0o600, "root")),
        ("/usr/share/log-sensor/packs", (0o755, "root")),
        (
            "/usr/share/log-sensor/packs/linux_syslog.json",
            (0o644, "root"),
        ),
        (
            "/usr/share/log-sensor/packs/macos_system.json",
            (0o644, "root"),
        ),
        ("/usr/share/log-sensor/packs/nginx.json", (0o644, "root")),
        ("/usr/share/log-sensor/packs/java_app.json", (0o644, "root")),
        ("/usr/share/log-sensor/packs/health.json", (0o644, "root")),
        (
            "/usr/lib/systemd/system/log-sensor.service",
            (0o644, "root"),
        ),
        ("/usr/bin/log-sensor-collector", (0o755, "root")),
        (
            "/usr/lib/systemd/system/log-sensor-collector.service",
            (0o644, "root"),
        ),
        (EXT, (0o755, "root")),
        ("/usr/lib/log-sensor", (0o755, "root")),
    ])
}

fn check_installed_paths() {
    for (p, (mode, owner)) in expected() {
        assert_eq!(mode_owner(p), (mode, owner.to_string()), "{p}");
    }
    assert_eq!(mode_owner("/var/lib/log-sensor"), (0o700, "root".into()));
    assert_eq!(
        mode_owner(COLLECTOR_DIR),
        (0o700, COLLECTOR_USER.to_string())
    );
    // Nothing any package installs is writable by others or owned by anyone but root.
    for pkg in PACKAGES {
        let list = run("dpkg -L", Command::new("dpkg").args(["-L", pkg]));
        for p in String::from_utf8_lossy(&list.stdout).lines() {
            let Ok(md) = std::fs::symlink_metadata(p) else {
                continue;
            };
            assert_eq!(md.uid(), 0, "{p} of {pkg} is not root's");
            assert_eq!(
                md.permissions().mode() & 0o022,
                0,
                "{p} of {pkg} is writable by group or others"
            );
        }
    }
}

fn load_lines() -> Vec<String> {
    std::fs::read_to_string(LOAD)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn agent(args: &[&str]) -> Output {
    Command::new("/usr/bin/log-sensor")
        .arg("-c")
        .arg(CONFIG)
        .args(args)
        .env("LOG_SENSOR_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn shipped(marker: &str) -> usize {
    std::fs::read_to_string("/var/lib/log-sensor/out.ndjson")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(marker))
        .count()
}

/// Starts the installed agent, waits until `line` is shipped, stops it.
fn ship_one(log: &Path, line: &str) {
    append_lines(log, &[line.to_string()]);
    let o = agent(&["start"]);
    assert!(o.status.success(), "start: {}", text(&o));
    wait_for(&format!("{line} shipped"), PATIENCE, || shipped(line) == 1);
    let o = agent(&["stop"]);
    assert!(o.status.success(), "stop: {}", text(&o));
}

fn rpm_files(rpm: &Path) -> BTreeMap<String, String> {
    let o = run(
        "rpm -qp",
        Command::new("rpm")
            .args([
                "-qp",
                "--queryformat",
                "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEFLAGS:fflags} %{FILENAMES}\\n]",
            ])
            .arg(rpm),
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, ' ');
            let (perms, user, flags, name) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some((name.to_string(), format!("{perms} {user} {flags}")))
        })
        .collect()
}

fn perms(mode: u32) -> String {
    let bits = ['r', 'w', 'x'];
    let mut s = String::from("-");
    for i in (0..9).rev() {
        s.push(if mode & (1 << i) != 0 {
            bits[(8 - i) % 3]
        } else {
            '-'
        });
    }
    s
}

fn check_rpms(rpms: &[PathBuf]) {
    let mut files = BTreeMap::new();
    let mut scripts = String::new();
    for rpm in rpms {
        files.extend(rpm_files(rpm));
        let s = run(
            "rpm --scripts",
            Command::new("rpm").args(["-qp", "--scripts"]).arg(rpm),
        );
        scripts.push_str(&text(&s));
    }
    for (p, (mode, owner)) in expected() {
        // Folders are not listed in these rpms; rpm makes them 0755 root.
        if p == "/usr/lib/log-sensor" || p == "/usr/share/log-sensor/packs" {
            continue;
        }
        let got = files
            .get(p)
            .unwrap_or_else(|| panic!("{p} is not in the rpms: {files:?}"));
        assert!(
            got.starts_with(&format!("{} {owner}", perms(mode))),
            "{p} in the rpm: {got}"
        );
    }
    assert!(
        files[CONFIG].ends_with(" cn"),
        "the config is %config(noreplace): {}",
        files[CONFIG]
    );
    for want in [
        "install -d -m 0700 -o root -g root /var/lib/log-sensor",
        "install -d -m 0700 -o log-sensor-collector -g log-sensor-collector /var/lib/log-sensor-collector",
        "useradd -r -g log-sensor-collector",
        "log-sensor-collector init --dir /var/lib/log-sensor-collector",
        "grep -vxF \"$ext\" \"$load\"",
        "rm -rf /var/lib/log-sensor",
        "rmdir /usr/lib/log-sensor",
        "rmdir /usr/share/log-sensor/packs /usr/share/log-sensor /etc/log-sensor",
        "[ -d /run/systemd/system ]",
    ] {
        assert!(scripts.contains(want), "no {want:?} in the rpm scripts:\n{scripts}");
    }
}

#[test]
fn packages_install_upgrade_and_purge_leaving_the_host_as_it_should() {
    assert!(
        is_root(),
        "the packaging test installs into this machine: run it as root"
    );
    let scratch = tempfile::tempdir().unwrap();
    let (v1, rpms) = build_packages(&scratch.path().join("v1"), "0.1.0-1", true);
    let (v2, _) = build_packages(&scratch.path().join("v2"), "0.1.0-2", false);
    check_rpms(&rpms);

    let guard = Installed::new();
    // An operator's own extension: installing and purging ours must leave its line alone.
    std::fs::create_dir_all("/etc/osquery").unwrap();
    std::fs::write(LOAD, "/opt/other/other.ext\n").unwrap();

    let out = install(&v1);
    assert!(
        text(&out).contains("log-sensor-collector init --dir /var/lib/log-sensor-collector"),
        "the collector's first-start note: {}",
        text(&out)
    );
    check_installed_paths();
    assert_eq!(load_lines(), ["/opt/other/other.ext", EXT]);

    for unit in ["log-sensor.service", "log-sensor-collector.service"] {
        let o = Command::new("systemd-analyze")
            .args(["verify", &format!("/usr/lib/systemd/system/{unit}")])
            .output()
            .expect("systemd-analyze (run tests/setup.sh)");
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "{unit}: {}",
            text(&o)
        );
    }

    // The installed binaries run, on the shipped config.
    let o = agent(&["--version"]);
    assert!(text(&o).contains(env!("CARGO_PKG_VERSION")), "{}", text(&o));
    let o = agent(&["check"]);
    assert!(
        o.status.success(),
        "check on the shipped config: {}",
        text(&o)
    );
    let o = agent(&["pack", "list"]);
    assert!(
        text(&o).contains("linux_syslog") && text(&o).contains("/usr/share/log-sensor/packs"),
        "{}",
        text(&o)
    );
    let o = run("extension --help", Command::new(EXT).arg("--help"));
    assert!(text(&o).contains("osquery"), "{}", text(&o));
    run(
        "collector init",
        Command::new("runuser")
            .args([
                "-u",
                COLLECTOR_USER,
                "--",
                "/usr/bin/log-sensor-collector",
                "init",
            ])
            .args([
                "--dir",
                COLLECTOR_DIR,
                "--name",
                "localhost",
                "--listen",
                "127.0.0.1:0",
            ]),
    );
    assert_eq!(
        mode_owner(&format!("{COLLECTOR_DIR}/ca.key")),
        (0o600, COLLECTOR_USER.to_string())
    );

    // A local edit of the conffile: a source of the test's own, whose offsets the upgrade must keep.
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("app.log");
    let mut conf = std::fs::read_to_string(CONFIG).unwrap();
    conf.push_str(&format!(
        "\n# local edit\n[sources.pkgtest]\npaths = [\"{}\"]\n",
        logs.path().join("*.log").display()
    ));
    std::fs::write(CONFIG, &conf).unwrap();
    ship_one(&log, "packaging-marker-before-upgrade");

    install(&v2);
    let o = run(
        "dpkg-query",
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Version} "])
            .args(PACKAGES),
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "0.1.0-2 0.1.0-2 0.1.0-2"
    );
    assert_eq!(
        std::fs::read_to_string(CONFIG).unwrap(),
        conf,
        "the local edit survives"
    );
    check_installed_paths();
    assert!(Path::new(&format!("{COLLECTOR_DIR}/collector.db")).exists());
    assert_eq!(load_lines(), ["/opt/other/other.ext", EXT], "listed once");
    // The store survived with its committed offset, and the upgraded agent resumes from it:
    // the old line is not shipped again, the new one is.
    let committed = agent(&[
        "query",
        "--json",
        "SELECT committed_offset FROM streams WHERE source = 'pkgtest'",
    ]);
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(
        text(&committed).contains(&format!("\"committed_offset\":{size}")),
        "the store after the upgrade: {}",
        text(&committed)
    );
    ship_one(&log, "packaging-marker-after-upgrade");
    assert_eq!(shipped("packaging-marker-before-upgrade"), 1);

    let purge = dpkg(&["--purge", PACKAGES[0], PACKAGES[1], PACKAGES[2]]);
    assert!(purge.status.success(), "{}", text(&purge));
    for gone in [
        "/usr/bin/log-sensor",
        "/usr/bin/log-sensor-collector",
        "/etc/log-sensor",
        "/var/lib/log-sensor",
        COLLECTOR_DIR,
        "/usr/lib/log-sensor",
        "/usr/share/log-sensor",
        "/usr/lib/systemd/system/log-sensor.service",
        "/usr/lib/systemd/system/log-sensor-collector.service",
        "/etc/systemd/system/multi-user.target.wants/log-sensor.service",
        "/etc/systemd/system/multi-user.target.wants/log-sensor-collector.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/log-sensor.service.dsh-also",
    ] {
        assert!(
            std::fs::symlink_metadata(gone).is_err(),
            "{gone} left after purge"
        );
    }
    assert_eq!(load_lines(), ["/opt/other/other.ext"], "only our line goes");
    // Debian keeps system users on purge: files elsewhere may still carry the uid.
    let o = Command::new("getent")
        .args(["passwd", COLLECTOR_USER])
        .output()
        .unwrap();
    assert!(o.status.success(), "the system user stays");
    drop(guard);
}
