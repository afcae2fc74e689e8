//! Accounts shared by collectors through a real cluster: what one writes,
//! another reads at once; racing enrolments record one certificate; a
//! collector that lost its server refuses rather than answer from an old
//! view.

use std::sync::Arc;

use super::tests::{nats_server, Cluster};
use super::*;
use crate::db::{CertState, Issued};

fn issued<'a>(serial: &'a str, host: &'a str, not_after: i64) -> Issued<'a> {
    Issued {
        serial,
        host_id: host,
        username: "alice",
        issued_at: log_sensor_common::clock::now_secs(),
        not_after,
        kind: "enroll",
        source_addr: "127.0.0.1",
    }
}

/// Two collectors on two nodes of a three-node R3 cluster.
#[test]
fn what_one_collector_writes_the_other_reads_at_once() {
    let c = Cluster::start(nats_server(), 3, "");
    let a = c.connect(&[0], 3);
    let b = c.connect(&[2], 3);
    let later = log_sensor_common::clock::now_secs() + 3600;

    a.add_user("alice", "$argon2id$hash", 1).unwrap();
    assert_eq!(
        b.user_hash("alice").unwrap().as_deref(),
        Some("$argon2id$hash")
    );
    assert!(matches!(
        b.add_user("alice", "h2", 2),
        Err(JetStreamError::UserExists { .. })
    ));
    b.delete_user("alice").unwrap();
    assert_eq!(a.user_hash("alice").unwrap(), None);
    assert!(matches!(
        a.delete_user("alice"),
        Err(JetStreamError::NoSuchUser { .. })
    ));
    a.add_user("alice", "h3", 3).unwrap();

    // A host id with a dot: its subject must not split.
    assert_eq!(
        a.record_enrolment(&issued("aa01", "web.1", later)).unwrap(),
        None
    );
    assert_eq!(
        b.record_enrolment(&issued("aa02", "web.1", later))
            .unwrap()
            .as_deref(),
        Some("aa01"),
        "a host with a live certificate is not enrolled again"
    );
    assert_eq!(b.cert_state("aa02").unwrap(), CertState::Unknown);
    b.record_issued(&Issued {
        kind: "renew",
        ..issued("aa03", "web.1", later)
    })
    .unwrap();
    assert!(matches!(
        a.cert_state("aa03").unwrap(),
        CertState::Valid { .. }
    ));

    // Revoked through one, refused by the other on its very next check.
    let rows = b.revoke("AA:01", 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(a.cert_state("aa01").unwrap(), CertState::Revoked);
    assert_eq!(
        a.revoked_serials().unwrap(),
        ["aa01".to_owned()].into_iter().collect()
    );
    // By host: every certificate of it; a repeat is not an error.
    let rows = a.revoke("web.1", 11).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.revoked_at.is_some()));
    assert_eq!(b.cert_state("aa03").unwrap(), CertState::Revoked);
    assert_eq!(b.revoked_serials().unwrap().len(), 2);
    assert!(matches!(
        a.revoke("nope", 12),
        Err(JetStreamError::NothingToRevoke { .. })
    ));
    assert_eq!(b.list_certs().unwrap().len(), 2);
    // Revoked everywhere: the host may enrol again.
    assert_eq!(
        a.record_enrolment(&issued("aa04", "web.1", later)).unwrap(),
        None
    );
}

#[test]
fn racing_enrolments_of_one_host_record_one_certificate() {
    let c = Cluster::start(nats_server(), 1, "");
    let collectors = [Arc::new(c.connect(&[0], 1)), Arc::new(c.connect(&[0], 1))];
    let later = log_sensor_common::clock::now_secs() + 3600;
    let results: Vec<Option<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let js = Arc::clone(&collectors[i % 2]);
                s.spawn(move || {
                    let serial = format!("bb{i:02}");
                    js.record_enrolment(&issued(&serial, "db", later)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let recorded: Vec<usize> = (0..8).filter(|i| results[*i].is_none()).collect();
    assert_eq!(recorded.len(), 1, "{results:?}");
    let winner = format!("bb{:02}", recorded[0]);
    for r in results.iter().flatten() {
        assert_eq!(r, &winner);
    }
    assert_eq!(collectors[0].list_certs().unwrap().len(), 1);
}

/// The collector's only server dies: its certificate checks fail (and the
/// handshake or batch with them) instead of answering from what it saw.
#[test]
fn a_collector_that_lost_its_server_refuses_instead_of_guessing() {
    let mut c = Cluster::start(nats_server(), 1, "");
    let js = c.connect(&[0], 1);
    js.record_enrolment(&issued(
        "cc01",
        "h",
        log_sensor_common::clock::now_secs() + 3600,
    ))
    .unwrap();
    assert!(matches!(
        js.cert_state("cc01").unwrap(),
        CertState::Valid { .. }
    ));
    c.nodes[0].kill9();
    assert!(js.cert_state("cc01").is_err());
}
