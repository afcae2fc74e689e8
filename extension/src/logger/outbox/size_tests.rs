//! The pending count `outbox_size` (sql/outbox.sql): exact whoever writes the outbox, and the
//! reason a logger call costs the same at 50,000 rows as at one (issue #10 item 7: the cap check
//! was a full scan per call, 0.18 ms a call on an empty outbox and 5 ms at 47,000 rows).
//!
//! Cost is measured as pages SQLite fetched (page-cache hits plus misses,
//! `sqlite3_db_status`) during one push: a scan or a `COUNT(*)` fetches every page of the
//! table, a b-tree lookup one page per level. Unlike a time, the count does not depend on how
//! loaded the machine is. Speed itself is measured in bench/outbox_bench.py.

use std::collections::BTreeSet;

use rusqlite::ffi;

use super::*;

/// A result row of osquery's event format, about the size osquery sends.
fn rec(i: i64) -> Record {
    Record {
        time: i,
        kind: Kind::Result,
        name: "pack_nginx_errors".into(),
        category: Some("event".into()),
        record: format!(
            r#"{{"name":"pack_nginx_errors","hostIdentifier":"web-01","calendarTime":"Thu Nov 26 15:43:03 2026 UTC","unixTime":1795707783,"epoch":0,"counter":{i},"numerics":false,"columns":{{"line":"2026/11/26 15:43:03 [error] 1234#0: *{i} open() failed"}},"action":"added"}}"#
        ),
    }
}

/// Adds `n` rows through the outbox's own connection in one transaction: what `n` logger calls
/// leave behind, minus the time.
fn prefill(o: &mut Outbox, n: i64) {
    let conn = o.conn.as_mut().expect("the outbox is open");
    let tx = conn.transaction().unwrap();
    {
        let mut st = tx
            .prepare(
                "INSERT INTO outbox (time, kind, name, category, record) \
                 VALUES (?1, 'result', ?2, ?3, ?4)",
            )
            .unwrap();
        for i in 0..n {
            let r = rec(i);
            st.execute(params![r.time, r.name, r.category, r.record])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Pages the outbox's connection fetched while pushing one record.
fn pages_per_push(o: &mut Outbox, r: Record) -> i32 {
    // SAFETY: the handle belongs to the open connection, which stays open across a successful
    // push (asserted below); sqlite3_db_status only reads counters of that connection.
    let db = unsafe { o.conn.as_ref().expect("the outbox is open").handle() };
    let fetched = |reset: i32| {
        let (mut hit, mut miss, mut high) = (0, 0, 0);
        unsafe {
            ffi::sqlite3_db_status(
                db,
                ffi::SQLITE_DBSTATUS_CACHE_HIT,
                &mut hit,
                &mut high,
                reset,
            );
            ffi::sqlite3_db_status(
                db,
                ffi::SQLITE_DBSTATUS_CACHE_MISS,
                &mut miss,
                &mut high,
                reset,
            );
        }
        hit + miss
    };
    fetched(1);
    o.push(r);
    assert!(
        o.conn.is_some() && o.memory.is_empty(),
        "the push reached the database"
    );
    fetched(0)
}

/// The most pages any of a few pushes fetched.
fn worst_of_pushes(o: &mut Outbox, from: i64) -> i32 {
    (from..from + 5)
        .map(|i| pages_per_push(o, rec(i)))
        .max()
        .unwrap()
}

fn rows(c: &Connection) -> (i64, i64) {
    c.query_row(
        "SELECT (SELECT COUNT(*) FROM outbox), (SELECT rows FROM outbox_size WHERE id = 1)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// A b-tree grows a level or two between one row and 50,000 (each lookup fetches one more page
/// per level, a push makes a few lookups); a scan of 50,000 rows fetches over a thousand.
const DEPTH_SLACK: i32 = 16;

#[test]
fn a_logger_call_fetches_as_many_pages_at_50000_rows_as_at_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::new(dir.path().join("outbox.db"), 1_000_000);
    o.push(rec(0));
    let small = worst_of_pushes(&mut o, 1);
    prefill(&mut o, 50_000);
    let large = worst_of_pushes(&mut o, 50_000);
    assert!(
        large <= small + DEPTH_SLACK,
        "a push fetched {large} pages at 50,000 rows but {small} at a few: it grows with the outbox"
    );
}

#[test]
fn a_call_on_a_full_outbox_fetches_as_many_pages_at_50000_rows_as_at_two() {
    let dir = tempfile::tempdir().unwrap();
    let mut tiny = Outbox::new(dir.path().join("tiny.db"), 2);
    (0..2).for_each(|i| tiny.push(rec(i)));
    let small = worst_of_pushes(&mut tiny, 2);

    let mut o = Outbox::new(dir.path().join("full.db"), 50_000);
    o.push(rec(0));
    prefill(&mut o, 49_999);
    let large = worst_of_pushes(&mut o, 50_000);
    assert!(
        large <= small + DEPTH_SLACK,
        "a push that drops the oldest fetched {large} pages at 50,000 rows but {small} at 2"
    );
    let c = open(o.path()).unwrap();
    assert_eq!(rows(&c), (50_000, 50_000), "still exactly at the cap");
}

#[test]
fn a_call_after_the_agent_shipped_out_of_order_costs_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::new(dir.path().join("outbox.db"), 50_000);
    o.push(rec(0));
    let small = worst_of_pushes(&mut o, 1);
    prefill(&mut o, 49_990);
    // Gaps: the id span now exceeds the cap while the rows do not.
    let agent = open(o.path()).unwrap();
    agent
        .execute("DELETE FROM outbox WHERE id BETWEEN 100 AND 199", [])
        .unwrap();
    let large = worst_of_pushes(&mut o, 50_000);
    assert!(
        large <= small + DEPTH_SLACK,
        "a push fetched {large} pages with a gappy outbox of 49,900 rows, {small} with a few"
    );
    assert_eq!(
        rows(&agent),
        (49_901, 49_901),
        "nothing dropped below the cap"
    );
}

#[test]
fn an_outbox_made_before_outbox_size_is_counted_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    {
        // The file as an extension without outbox_size left it, holding 5 rows.
        let c = Connection::open(&path).unwrap();
        c.execute_batch(OUTBOX_SQL).unwrap();
        c.execute_batch(
            "DROP TRIGGER outbox_size_insert; DROP TRIGGER outbox_size_delete; \
             DROP TABLE outbox_size; PRAGMA user_version = 1;",
        )
        .unwrap();
        for i in 0..5 {
            c.execute(
                "INSERT INTO outbox (time, kind, name, record) VALUES (?1, 'result', 'q', '{}')",
                [i],
            )
            .unwrap();
        }
    }
    let mut o = Outbox::new(path, 5);
    o.push(rec(5));
    let c = open(o.path()).unwrap();
    assert_eq!(rows(&c), (5, 5), "the sixth row pushed the oldest out");
    let first: i64 = c
        .query_row("SELECT MIN(id) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(first, 2);
}

#[test]
fn a_count_that_drifted_is_repaired_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::new(dir.path().join("outbox.db"), 3);
    (0..3).for_each(|i| o.push(rec(i)));
    // An INSERT OR REPLACE by hand: its implicit delete fires no trigger.
    let c = Connection::open(o.path()).unwrap();
    c.execute(
        "INSERT OR REPLACE INTO outbox (id, time, kind, name, record) \
         VALUES (1, 0, 'result', 'q', '{}')",
        [],
    )
    .unwrap();
    assert_eq!(rows(&c), (3, 4));
    drop(o);
    let mut o = Outbox::new(dir.path().join("outbox.db"), 3);
    o.push(rec(3));
    assert_eq!(rows(&c), (3, 3), "recounted at open, then one dropped");
}

/// xorshift64: a fixed, dependency-free sequence per seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Random pushes, acknowledgements (`DELETE … WHERE id <= ?`, the agent's statement), single
/// deletes out of order and restarts, against the real outbox and a model of what it must hold:
/// ids only grow, the oldest go past the cap, and the count always equals the table.
#[test]
fn the_cap_and_the_count_agree_with_a_model_under_any_mix_of_writers() {
    const CAP: usize = 6;
    for seed in [0x9e37_79b9_7f4a_7c15_u64, 42, 7_777_777] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let mut o = Outbox::new(path.clone(), CAP as u64);
        o.push(rec(0));
        let agent = open(&path).unwrap();
        let mut rng = Rng(seed);
        let mut model: BTreeSet<i64> = BTreeSet::from([1]);
        let (mut next_id, mut dropped) = (2_i64, 0_i64);
        for step in 0..150 {
            let op = rng.below(10);
            let what = match op {
                0..=5 => {
                    o.push(rec(step));
                    model.insert(next_id);
                    next_id += 1;
                    while model.len() > CAP {
                        model.pop_first();
                        dropped += 1;
                    }
                    "push"
                }
                6 | 7 if !model.is_empty() => {
                    let ids: Vec<i64> = model.iter().copied().collect();
                    let upto = ids[rng.below(ids.len() as u64) as usize];
                    agent
                        .execute("DELETE FROM outbox WHERE id <= ?1", [upto])
                        .unwrap();
                    model.retain(|id| *id > upto);
                    "ack"
                }
                8 if !model.is_empty() => {
                    let ids: Vec<i64> = model.iter().copied().collect();
                    let id = ids[rng.below(ids.len() as u64) as usize];
                    agent
                        .execute("DELETE FROM outbox WHERE id = ?1", [id])
                        .unwrap();
                    model.remove(&id);
                    "delete one"
                }
                _ => {
                    drop(o);
                    o = Outbox::new(path.clone(), CAP as u64);
                    "restart"
                }
            };
            let ids: BTreeSet<i64> = agent
                .prepare("SELECT id FROM outbox")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let ctx = format!("seed {seed}, step {step} ({what})");
            assert_eq!(ids, model, "{ctx}");
            let (count, size) = rows(&agent);
            assert_eq!(size, count, "outbox_size drifted: {ctx}");
            let counted: i64 = agent
                .query_row(
                    "SELECT IFNULL((SELECT value FROM counters WHERE name = 'dropped_full'), 0)",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(counted, dropped, "{ctx}");
        }
    }
}
