//! Accounts in the cluster, on the `{prefix}_accounts` stream: users and
//! password hashes, certificates issued with their enrolment audit, and
//! revocations. Every read asks the stream's leader, so a collector never
//! decides on a view older than the last acknowledged write: a revocation
//! made through any collector is seen by every other on its next check,
//! and a collector that cannot reach the leader refuses instead of
//! guessing.
//!
//! Subjects, one message kept per subject (`Nats-Rollup: sub`) except the
//! audit:
//! * `{prefix}.user.{name}`: `{"hash", "created_at"}`, or `{"deleted": true}`;
//! * `{prefix}.cert.{serial}`: the certificate's row;
//! * `{prefix}.host.{host}`: `{"serials": [...]}`, every certificate of the
//!   host, oldest first;
//! * `{prefix}.enrol.{host}`: one audit message per enrolment or renewal;
//! * `{prefix}.revoked.{serial}`: present once the serial is revoked.
//!
//! Writes that must agree (a certificate, its host's list and the audit;
//! a revocation and its marker) are one atomic batch, each message
//! expecting the last sequence of its subject read before: of two racing
//! enrolments of one host exactly one is recorded.

use std::collections::HashSet;

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::api::{self, ApiError};
use super::batch::{is_conflict, publish_atomic, Outgoing};
use super::{JetStream, JetStreamError};
use crate::db::{CertRow, CertState, Issued};
use crate::names::decode_subject_token;

/// Tries of a compare-and-set write before giving up.
const MAX_TRIES: u32 = 16;

#[derive(Serialize, Deserialize)]
struct User {
    #[serde(default)]
    hash: String,
    #[serde(default)]
    created_at: i64,
    #[serde(default)]
    deleted: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct Host {
    serials: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Cert {
    serial: String,
    host_id: String,
    username: String,
    issued_at: i64,
    not_after: i64,
    revoked_at: Option<i64>,
}

impl From<Cert> for CertRow {
    fn from(c: Cert) -> CertRow {
        CertRow {
            serial: c.serial,
            host_id: c.host_id,
            username: c.username,
            issued_at: c.issued_at,
            not_after: c.not_after,
            revoked_at: c.revoked_at,
        }
    }
}

/// A message replacing its subject's last, if that is still the one read.
fn replacing(subject: String, expected_seq: u64, body: Vec<u8>) -> Outgoing {
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        expected_seq.to_string(),
    );
    headers.insert("Nats-Rollup", "sub");
    Outgoing {
        subject,
        headers,
        body: body.into(),
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("account records serialise")
}

impl JetStream {
    /// The last message on an accounts subject, parsed, with its sequence
    /// (0 and None: no message yet).
    async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        subject: &str,
    ) -> Result<(u64, Option<T>), JetStreamError> {
        match api::last_on_subject(&self.client, &self.names.accounts, subject, self.timeout)
            .await?
        {
            None => Ok((0, None)),
            Some((seq, data)) => {
                let v = serde_json::from_slice(&data).map_err(|e| ApiError::BadAnswer {
                    what: format!("the record on {subject}"),
                    detail: e.to_string(),
                })?;
                Ok((seq, Some(v)))
            }
        }
    }

    pub fn user_hash(&self, name: &str) -> Result<Option<String>, JetStreamError> {
        let subject = self.names.account("user", name);
        self.block(async {
            let (_, user) = self.read::<User>(&subject).await?;
            Ok(user.filter(|u| !u.deleted).map(|u| u.hash))
        })
    }

    pub fn add_user(&self, name: &str, hash: &str, now: i64) -> Result<(), JetStreamError> {
        let subject = self.names.account("user", name);
        let user = User {
            hash: hash.to_owned(),
            created_at: now,
            deleted: false,
        };
        self.write_user(name, &subject, user, false)
    }

    pub fn delete_user(&self, name: &str) -> Result<(), JetStreamError> {
        let subject = self.names.account("user", name);
        let tombstone = User {
            hash: String::new(),
            created_at: 0,
            deleted: true,
        };
        self.write_user(name, &subject, tombstone, true)
    }

    /// Adds (`must_exist` false) or deletes a user, compare-and-set.
    fn write_user(
        &self,
        name: &str,
        subject: &str,
        user: User,
        must_exist: bool,
    ) -> Result<(), JetStreamError> {
        self.block(async {
            for _ in 0..MAX_TRIES {
                let (seq, current) = self.read::<User>(subject).await?;
                let exists = current.is_some_and(|u| !u.deleted);
                if exists != must_exist {
                    return Err(if exists {
                        JetStreamError::UserExists {
                            name: name.to_owned(),
                        }
                    } else {
                        JetStreamError::NoSuchUser {
                            name: name.to_owned(),
                        }
                    });
                }
                let m = replacing(subject.to_owned(), seq, json(&user));
                match api::publish(
                    &self.client,
                    "writing a user",
                    m.subject,
                    m.headers,
                    m.body,
                    self.timeout,
                )
                .await
                {
                    Ok(_) => return Ok(()),
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(JetStreamError::Contended {
                host: name.to_owned(),
                tries: MAX_TRIES,
            })
        })
    }

    pub fn cert_state(&self, serial: &str) -> Result<CertState, JetStreamError> {
        let subject = self.names.account("cert", serial);
        self.block(async {
            Ok(match self.read::<Cert>(&subject).await?.1 {
                None => CertState::Unknown,
                Some(c) if c.revoked_at.is_some() => CertState::Revoked,
                Some(c) => CertState::Valid {
                    username: c.username,
                },
            })
        })
    }

    /// Records a renewed certificate with its host and audit.
    pub fn record_issued(&self, issued: &Issued<'_>) -> Result<(), JetStreamError> {
        self.issue(issued, false).map(|_| ())
    }

    /// Records a first enrolment unless the host has a live certificate,
    /// whose serial is then returned.
    pub fn record_enrolment(&self, issued: &Issued<'_>) -> Result<Option<String>, JetStreamError> {
        self.issue(issued, true)
    }

    fn issue(
        &self,
        issued: &Issued<'_>,
        only_if_none_live: bool,
    ) -> Result<Option<String>, JetStreamError> {
        let host_subject = self.names.account("host", issued.host_id);
        let cert_subject = self.names.account("cert", issued.serial);
        let cert = Cert {
            serial: issued.serial.to_owned(),
            host_id: issued.host_id.to_owned(),
            username: issued.username.to_owned(),
            issued_at: issued.issued_at,
            not_after: issued.not_after,
            revoked_at: None,
        };
        let audit = serde_json::json!({
            "at": issued.issued_at,
            "kind": issued.kind,
            "username": issued.username,
            "host_id": issued.host_id,
            "serial": issued.serial,
            "source_addr": issued.source_addr,
        });
        self.block(async {
            for _ in 0..MAX_TRIES {
                let (host_seq, host) = self.read::<Host>(&host_subject).await?;
                let mut host = host.unwrap_or_default();
                if only_if_none_live {
                    let now = log_sensor_common::clock::now_secs();
                    for serial in host.serials.iter().rev() {
                        let (_, c) = self
                            .read::<Cert>(&self.names.account("cert", serial))
                            .await?;
                        if c.is_some_and(|c| c.revoked_at.is_none() && c.not_after > now) {
                            return Ok(Some(serial.clone()));
                        }
                    }
                }
                host.serials.push(issued.serial.to_owned());
                let messages = vec![
                    replacing(cert_subject.clone(), 0, json(&cert)),
                    replacing(host_subject.clone(), host_seq, json(&host)),
                    Outgoing {
                        subject: self.names.account("enrol", issued.host_id),
                        headers: HeaderMap::new(),
                        body: Bytes::from(json(&audit)),
                    },
                ];
                match publish_atomic(self, &self.names.accounts, messages).await {
                    Ok(()) => return Ok(None),
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(JetStreamError::Contended {
                host: issued.host_id.to_owned(),
                tries: MAX_TRIES,
            })
        })
    }

    /// Every revoked serial, from the markers' subjects.
    pub fn revoked_serials(&self) -> Result<HashSet<String>, JetStreamError> {
        let filter = self
            .names
            .account("revoked", "")
            .trim_end_matches('.')
            .to_owned()
            + ".>";
        self.block(async {
            let subjects =
                api::subjects(&self.client, &self.names.accounts, &filter, self.timeout).await?;
            Ok(subjects
                .iter()
                .filter_map(|s| s.rsplit('.').next().and_then(decode_subject_token))
                .collect())
        })
    }

    /// Revokes the certificate with serial `target`, or else every
    /// certificate of host `target`; returns the matching rows after.
    pub fn revoke(&self, target: &str, now: i64) -> Result<Vec<CertRow>, JetStreamError> {
        let serial = target.to_ascii_lowercase().replace(':', "");
        self.block(async {
            let (_, by_serial) = self
                .read::<Cert>(&self.names.account("cert", &serial))
                .await?;
            let serials = match by_serial {
                Some(_) => vec![serial],
                None => {
                    let (_, host) = self
                        .read::<Host>(&self.names.account("host", target))
                        .await?;
                    host.map(|h| h.serials).unwrap_or_default()
                }
            };
            let mut rows = Vec::new();
            for serial in &serials {
                rows.push(self.revoke_one(serial, now).await?);
            }
            if rows.is_empty() {
                return Err(JetStreamError::NothingToRevoke {
                    target: target.to_owned(),
                });
            }
            Ok(rows)
        })
    }

    async fn revoke_one(&self, serial: &str, now: i64) -> Result<CertRow, JetStreamError> {
        let subject = self.names.account("cert", serial);
        for _ in 0..MAX_TRIES {
            let (seq, cert) = self.read::<Cert>(&subject).await?;
            let Some(mut cert) = cert else {
                return Err(JetStreamError::NothingToRevoke {
                    target: serial.to_owned(),
                });
            };
            if cert.revoked_at.is_some() {
                return Ok(cert.into());
            }
            cert.revoked_at = Some(now);
            let messages = vec![
                replacing(subject.clone(), seq, json(&cert)),
                replacing(
                    self.names.account("revoked", serial),
                    0,
                    json(&serde_json::json!({ "at": now })),
                ),
            ];
            match publish_atomic(self, &self.names.accounts, messages).await {
                Ok(()) => return Ok(cert.into()),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(JetStreamError::Contended {
            host: serial.to_owned(),
            tries: MAX_TRIES,
        })
    }

    pub fn list_certs(&self) -> Result<Vec<CertRow>, JetStreamError> {
        let filter = self
            .names
            .account("cert", "")
            .trim_end_matches('.')
            .to_owned()
            + ".>";
        self.block(async {
            let subjects =
                api::subjects(&self.client, &self.names.accounts, &filter, self.timeout).await?;
            let mut rows: Vec<CertRow> = Vec::new();
            for s in subjects {
                if let (_, Some(c)) = self.read::<Cert>(&s).await? {
                    rows.push(c.into());
                }
            }
            rows.sort_by(|a, b| {
                (&a.host_id, a.issued_at, &a.serial).cmp(&(&b.host_id, b.issued_at, &b.serial))
            });
            Ok(rows)
        })
    }
}
