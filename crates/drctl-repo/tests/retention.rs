//! Retention on sets with synthetic timestamps across months: the kept sets match tables
//! written out by hand (restic `forget` semantics, UTC buckets, ISO weeks).

use std::sync::Arc;
use std::time::Duration;

use drctl_core::config::Retention;
use drctl_core::runbook::Selection;
use drctl_repo::retention::apply;
use drctl_repo::{ItemSpec, Options, RepoError, Repository};
use jiff::Timestamp;

/// 16 sets from August to November 2026. 2026-11-22 is a Sunday: 11-16..11-22 is ISO
/// week 47, 11-12 is in week 46, 11-05 in week 45, 10-29 in week 44.
const SETS: &[(&str, &str)] = &[
    ("s01", "2026-08-10T03:00:00Z"),
    ("s02", "2026-08-25T03:00:00Z"),
    ("s03", "2026-09-05T03:00:00Z"),
    ("s04", "2026-09-20T03:00:00Z"),
    ("s05", "2026-10-01T03:00:00Z"),
    ("s06", "2026-10-15T03:00:00Z"),
    ("s07", "2026-10-29T03:00:00Z"),
    ("s08", "2026-11-05T03:00:00Z"),
    ("s09", "2026-11-12T03:00:00Z"),
    ("s10", "2026-11-19T03:00:00Z"),
    ("s11", "2026-11-20T03:00:00Z"),
    ("s12", "2026-11-21T03:00:00Z"),
    ("s13", "2026-11-22T01:00:00Z"),
    ("s14", "2026-11-22T02:00:00Z"),
    ("s15", "2026-11-22T02:30:00Z"),
    ("s16", "2026-11-22T03:00:00Z"),
];

fn sets() -> Vec<(String, Timestamp)> {
    SETS.iter()
        .map(|(id, t)| (id.to_string(), t.parse().unwrap()))
        .collect()
}

fn policy(last: u32, hourly: u32, daily: u32, weekly: u32, monthly: u32) -> Retention {
    let n = |v: u32| (v > 0).then_some(v);
    Retention {
        keep_last: n(last),
        hourly: n(hourly),
        daily: n(daily),
        weekly: n(weekly),
        monthly: n(monthly),
    }
}

/// (id, reasons) of the kept sets, newest first.
fn kept(p: &Retention) -> Vec<(String, String)> {
    apply(&sets(), p)
        .into_iter()
        .filter(|d| d.keep)
        .map(|d| (d.id, d.reasons.join(",")))
        .collect()
}

fn table(rows: &[(&str, &str)]) -> Vec<(String, String)> {
    rows.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn mixed_policy_table() {
    // keep_last 2, hourly 3, daily 4, weekly 3, monthly 3.
    //   last:    s16 s15
    //   hourly:  s16 (03h) s15 (02h; s14 is the same hour) s13 (01h)
    //   daily:   s16 (11-22) s12 (11-21) s11 (11-20) s10 (11-19)
    //   weekly:  s16 (W47) s09 (W46) s08 (W45)
    //   monthly: s16 (Nov) s07 (Oct) s04 (Sep)
    assert_eq!(
        kept(&policy(2, 3, 4, 3, 3)),
        table(&[
            ("s16", "newest,last,hourly,daily,weekly,monthly"),
            ("s15", "last,hourly"),
            ("s13", "hourly"),
            ("s12", "daily"),
            ("s11", "daily"),
            ("s10", "daily"),
            ("s09", "weekly"),
            ("s08", "weekly"),
            ("s07", "monthly"),
            ("s04", "monthly"),
        ])
    );
}

#[test]
fn oldest_kept_while_counts_remain() {
    // monthly 12 over four months: the newest of each month, plus (as restic does) the
    // oldest set, since the policy still had counts left.
    assert_eq!(
        kept(&policy(0, 0, 0, 0, 12)),
        table(&[
            ("s16", "newest,monthly"),
            ("s07", "monthly"),
            ("s04", "monthly"),
            ("s02", "monthly"),
            ("s01", "monthly"),
        ])
    );
    // weekly 2: W47, W46; no counts left at the oldest.
    assert_eq!(
        kept(&policy(0, 0, 0, 2, 0)),
        table(&[("s16", "newest,weekly"), ("s09", "weekly")])
    );
}

#[test]
fn last_only_and_no_policy() {
    assert_eq!(
        kept(&policy(3, 0, 0, 0, 0)),
        table(&[("s16", "newest,last"), ("s15", "last"), ("s14", "last")])
    );
    // No policy at all: keep everything (restic refuses to forget without one).
    let all = kept(&Retention::default());
    assert_eq!(all.len(), SETS.len());
    assert!(all.iter().all(|(_, r)| r.contains("no policy")));
    // Whatever the input order.
    let mut rev = sets();
    rev.reverse();
    assert_eq!(
        apply(&rev, &policy(2, 3, 4, 3, 3)),
        apply(&sets(), &policy(2, 3, 4, 3, 3))
    );
}

/// The same through a real repository (local folder): sets written with synthetic start
/// times, an old and a young incomplete set, a set of another stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_a_local_repository() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(drctl_repo::LocalBackend::new(dir.path()));
    let opts = Options {
        incomplete_grace: Duration::from_secs(3600),
        ..Options::default()
    };
    let repo = Repository::from_backend(b, "", None, opts).with_stack(Some("app".into()));
    let mut ids = std::collections::BTreeMap::new();
    for (name, t) in SETS {
        let started: Timestamp = t.parse().unwrap();
        let set = repo.begin_set_at("app", vec![name.to_string()], started);
        set.put(ItemSpec::new("x", "spec", "test"), name.as_bytes())
            .await
            .unwrap();
        let m = set
            .finish_at(started + jiff::SignedDuration::from_mins(5))
            .await
            .unwrap();
        ids.insert(m.id.clone(), name.to_string());
    }
    let now: Timestamp = "2026-11-22T04:00:00Z".parse().unwrap();
    // Incomplete: one 3 hours old (a dead backup), one 10 minutes old (maybe running).
    for (t, name) in [
        ("2026-11-22T01:00:00Z", "dead"),
        ("2026-11-22T03:50:00Z", "running"),
    ] {
        let set = repo.begin_set_at("app", vec![], t.parse().unwrap());
        set.put(ItemSpec::new(name, "spec", "test"), &b"x"[..])
            .await
            .unwrap();
        ids.insert(set.id().to_string(), name.to_string());
    }
    // Another stack's set, older than everything: never touched.
    let other = repo.begin_set_at("other", vec![], "2026-01-01T00:00:00Z".parse().unwrap());
    other
        .put(ItemSpec::new("x", "spec", "test"), &b"x"[..])
        .await
        .unwrap();
    let other = other
        .finish_at("2026-01-01T00:05:00Z".parse().unwrap())
        .await
        .unwrap();
    ids.insert(other.id.clone(), "other".into());

    let p = policy(2, 3, 4, 3, 3);
    let plan = repo.prune(&p, now, true).await.unwrap();
    let names = |entries: &[drctl_repo::PruneEntry]| -> Vec<String> {
        entries.iter().map(|e| ids[&e.id].clone()).collect()
    };
    assert_eq!(
        names(&plan.remove),
        ["s14", "dead", "s06", "s05", "s03", "s02", "s01"]
    );
    assert_eq!(
        names(&plan.keep),
        [
            "running", "s16", "s15", "s13", "s12", "s11", "s10", "s09", "s08", "s07", "s04",
            "other"
        ]
    );
    let reasons = |n: &str| {
        plan.keep
            .iter()
            .chain(&plan.remove)
            .find(|e| ids[&e.id] == n)
            .unwrap()
            .reasons
            .join(",")
    };
    assert!(
        reasons("running").contains("still be writing"),
        "{}",
        reasons("running")
    );
    assert!(
        reasons("dead").contains("older than 1h"),
        "{}",
        reasons("dead")
    );
    assert!(reasons("other").contains("another stack"));
    assert_eq!(
        repo.list().await.unwrap().len(),
        ids.len(),
        "dry run deletes nothing"
    );

    let done = repo.prune(&p, now, false).await.unwrap();
    assert_eq!(names(&done.remove), names(&plan.remove));
    let left: Vec<String> = repo
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| ids[&s.id].clone())
        .collect();
    assert_eq!(
        left,
        [
            "other", "s04", "s07", "s08", "s09", "s10", "s11", "s12", "s13", "s15", "s16",
            "running"
        ]
    );

    // Selection on what is left.
    let ids = &ids;
    let pick = |sel: Selection| {
        let repo = repo.clone();
        async move { repo.select(&sel, now).await.map(|m| ids[&m.id].clone()) }
    };
    assert_eq!(pick(Selection::Latest).await.unwrap(), "s16");
    assert_eq!(pick(Selection::Tag("s09".into())).await.unwrap(), "s09");
    assert_eq!(
        pick(Selection::Before("2026-11-20T12:00:00Z".into()))
            .await
            .unwrap(),
        "s11"
    );
    // 2h before 04:00 is 02:00: s14 is gone, s13 (01:00) is the newest before.
    assert_eq!(pick(Selection::Before("2h".into())).await.unwrap(), "s13");
    let e = pick(Selection::Tag("s14".into())).await.unwrap_err();
    assert!(matches!(e, RepoError::NoSetMatches { .. }), "{e}");
    assert!(e.to_string().contains("s14"), "{e}");
    let e = pick(Selection::Before("2026-01-01T00:00:00Z".into()))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("none of the 10 complete sets of stack app"),
        "{e}"
    );
    let e = pick(Selection::Step("safety".into())).await.unwrap_err();
    assert!(matches!(e, RepoError::Unsupported(_)), "{e}");
    let running_id = ids.iter().find(|(_, n)| *n == "running").unwrap().0.clone();
    let e = pick(Selection::Id(running_id)).await.unwrap_err();
    assert!(matches!(e, RepoError::SetIncomplete { .. }), "{e}");
    let e = pick(Selection::Id("20200101T000000Z-abcdef".into()))
        .await
        .unwrap_err();
    assert!(matches!(e, RepoError::NoSetMatches { .. }), "{e}");

    // The newest complete set survives any policy.
    let plan = repo
        .prune(&policy(0, 0, 0, 1, 0), now, false)
        .await
        .unwrap();
    assert!(plan.keep.iter().any(|e| ids[&e.id] == "s16"));
    assert_eq!(pick(Selection::Latest).await.unwrap(), "s16");
}
