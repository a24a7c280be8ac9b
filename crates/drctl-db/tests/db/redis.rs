//! Redis: 200k keys of every type with TTLs, AOF on and off; back up, FLUSHALL, restore,
//! compare fingerprints; a restart keeps the restored data; unhappy paths.

use std::time::{Duration, Instant};

use drctl_core::config::RedisTarget;
use drctl_db::{DbError, Redis, RedisBackupOptions, RedisRestoreOptions};

use crate::common::{docker, env_var, poll, temp_file, Cleanup, REDIS_IMAGE};
use crate::lab;

/// Writes `ARGV[1]` keys, cycling through the types; every tenth key gets a TTL, a few
/// streams get a consumer group, and one string is 1 MiB.
const SEED: &str = r#"
local n = tonumber(ARGV[1])
local p = ARGV[2]
for i = 1, n do
  local m = i % 6
  local k
  if m == 0 then k = p .. 'str:' .. i; redis.call('SET', k, 'value-' .. i .. string.rep('x', i % 50))
  elseif m == 1 then k = p .. 'hash:' .. i; redis.call('HSET', k, 'a', i, 'b', 'bee' .. i, 'c', i * 2)
  elseif m == 2 then k = p .. 'list:' .. i; redis.call('RPUSH', k, 'x' .. i, 'y', 'z' .. (i % 10))
  elseif m == 3 then k = p .. 'set:' .. i; redis.call('SADD', k, 'm1', 'm' .. i, 'm' .. (i % 17))
  elseif m == 4 then k = p .. 'zset:' .. i; redis.call('ZADD', k, i, 'a' .. i, i / 3, 'b', -i, 'c')
  else
    k = p .. 'stream:' .. i
    redis.call('XADD', k, i .. '-1', 'f', 'v' .. i)
    redis.call('XADD', k, i .. '-2', 'g', 'w')
    if i % 600 == 5 then redis.call('XGROUP', 'CREATE', k, 'readers', '0') end
  end
  if i % 10 == 0 then redis.call('EXPIRE', k, 3600) end
end
return n
"#;

fn target(password_env: Option<String>) -> RedisTarget {
    serde_json::from_value(serde_json::json!({"service": "redis", "password_env": password_env}))
        .unwrap()
}

fn cli(c: &str, password: Option<&str>, args: &[&str]) -> String {
    let auth = password.map(|p| format!("REDISCLI_AUTH={p}"));
    let mut a = vec!["exec"];
    if let Some(e) = &auth {
        a.extend(["-e", e.as_str()]);
    }
    a.extend([c, "redis-cli"]);
    a.extend(args);
    docker(&a)
}

fn seed(c: &str, password: Option<&str>) {
    cli(c, password, &["EVAL", SEED, "0", "150000", ""]);
    cli(
        c,
        password,
        &["-n", "2", "EVAL", SEED, "0", "50000", "db2:"],
    );
    cli(
        c,
        password,
        &[
            "EVAL",
            "return redis.call('SET', 'big', string.rep('x', 1048576))",
            "0",
        ],
    );
}

async fn roundtrip(aof: bool, password: Option<&str>) {
    let suite = format!("redis roundtrip (AOF {})", if aof { "on" } else { "off" });
    let docker_client = lab!(&suite, REDIS_IMAGE);
    let t0 = Instant::now();
    let clean = Cleanup::default();
    let env = format!("REDIS_APPENDONLY={}", if aof { "yes" } else { "no" });
    let what = if aof { "redis-aof" } else { "redis-rdb" };
    let cmd: Vec<&str> = match password {
        Some(p) => vec!["--requirepass", p],
        None => vec![],
    };
    let c = clean.run(what, "/data", &["-e", &env], REDIS_IMAGE, &cmd);
    let password_env = password.map(|p| env_var(&format!("{what}_pw").replace('-', "_"), p));
    let redis = Redis::new(docker_client.clone(), &c, &target(password_env)).unwrap();
    redis.wait_ready(poll(60)).await.unwrap();
    seed(&c, password);
    eprintln!("{suite}: seeded in {:.1} s", t0.elapsed().as_secs_f64());

    let p = redis.persistence().await.unwrap();
    assert_eq!(p.appendonly, aof);
    let before = redis.fingerprint().await.unwrap();
    assert_eq!(before.databases[&0].keys, 150_001);
    assert_eq!(before.databases[&2].keys, 50_000);
    assert_eq!(before.databases[&0].expires, 15_000);
    let sample = &before.databases[&0].sample;
    assert!(sample.keys > 500 && sample.keys < 5000, "{sample:?}");
    for t in ["string", "hash", "list", "set", "zset", "stream"] {
        assert!(sample.types.contains_key(t), "{t} not sampled: {sample:?}");
    }

    // With AOF on, a writer runs during the backup: the fingerprint must still describe
    // exactly the RDB (writes are paused between the fingerprint and the fork).
    if aof {
        let script = "for i in $(seq 1 400); do redis-cli SET live:$i $i >/dev/null; done; redis-cli SET writer:done 1 >/dev/null";
        docker(&["exec", "-d", &c, "sh", "-c", script]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let t = Instant::now();
    let file = temp_file();
    let mut f = tokio::fs::File::create(file.path()).await.unwrap();
    let report = redis
        .backup(&mut f, &RedisBackupOptions::default())
        .await
        .unwrap();
    drop(f);
    eprintln!(
        "{suite}: backup {} bytes (RDB v{:?}) in {:.1} s",
        report.bytes,
        report.rdb_version,
        t.elapsed().as_secs_f64()
    );
    assert!(report.fingerprint_exact);
    assert_eq!(report.bytes, std::fs::metadata(file.path()).unwrap().len());
    let at_backup = report.fingerprint.clone().unwrap();
    if aof {
        // Let the writer finish before the data is thrown away.
        for _ in 0..200 {
            if cli(&c, password, &["GET", "writer:done"]) == "1" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "{suite}: keys at backup {} (seeded {})",
            at_backup.databases[&0].keys, before.databases[&0].keys
        );
    } else {
        assert_eq!(at_backup, before);
    }

    cli(&c, password, &["FLUSHALL"]);
    assert_eq!(cli(&c, password, &["DBSIZE"]), "0");

    let t = Instant::now();
    let mut f = tokio::fs::File::open(file.path()).await.unwrap();
    let r = redis
        .restore(&mut f, &RedisRestoreOptions::default())
        .await
        .unwrap();
    eprintln!(
        "{suite}: restore ({}, {}) in {:.1} s, down {:.1} s",
        r.layout,
        r.path,
        t.elapsed().as_secs_f64(),
        r.downtime_seconds
    );
    assert!(r.checked);
    assert_eq!(r.layout, if aof { "aof-base" } else { "rdb" });
    let after = redis.fingerprint().await.unwrap();
    assert!(
        at_backup.compare(&after).is_empty(),
        "{:?}",
        at_backup.compare(&after)
    );
    assert_eq!(cli(&c, password, &["STRLEN", "big"]), (1 << 20).to_string());
    if aof {
        let manifest = docker(&[
            "exec",
            &c,
            "cat",
            "/data/appendonlydir/appendonly.aof.manifest",
        ]);
        assert!(manifest.contains("appendonly.aof.1.base.rdb"), "{manifest}");
    }

    // Writes after the restore persist, and a restart brings back the same data (from the
    // new AOF base plus its increments, or from dump.rdb).
    cli(&c, password, &["SET", "after:restore", "yes"]);
    docker(&["restart", "-t", "30", &c]);
    redis.wait_ready(poll(60)).await.unwrap();
    assert_eq!(cli(&c, password, &["GET", "after:restore"]), "yes");
    cli(&c, password, &["DEL", "after:restore"]);
    let restarted = redis.fingerprint().await.unwrap();
    assert!(
        at_backup.compare(&restarted).is_empty(),
        "{:?}",
        at_backup.compare(&restarted)
    );
    eprintln!("{suite}: {:.1} s", t0.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_roundtrip_aof_on() {
    roundtrip(true, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_roundtrip_aof_off_with_password() {
    roundtrip(false, Some("redis-rt-secret")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unhappy_paths() {
    let docker_client = lab!("redis unhappy paths", REDIS_IMAGE);
    let t0 = Instant::now();
    let clean = Cleanup::default();
    let password = "redis-unhappy-secret";
    let c = clean.run(
        "redis-bad",
        "/data",
        &["-e", "REDIS_APPENDONLY=no"],
        REDIS_IMAGE,
        &["--requirepass", password],
    );
    let redis = Redis::new(
        docker_client.clone(),
        &c,
        &target(Some(env_var("redis_ok", password))),
    )
    .unwrap();
    redis.wait_ready(poll(60)).await.unwrap();
    cli(
        &c,
        Some(password),
        &[
            "EVAL",
            "for i = 0, 99 do redis.call('SET', 'k' .. i, 'v' .. i) end",
            "0",
        ],
    );

    // Wrong password, and none at all: fail at once, never show the password.
    let wrong = Redis::new(
        docker_client.clone(),
        &c,
        &target(Some(env_var("redis_wrong", "nope-nope"))),
    )
    .unwrap();
    let e = wrong.fingerprint().await.unwrap_err();
    assert!(e.is_auth(), "{e}");
    assert!(
        !e.to_string().contains("nope-nope") && !e.to_string().contains(password),
        "{e}"
    );
    let t = Instant::now();
    let e = wrong.wait_ready(poll(30)).await.unwrap_err();
    assert!(!e.is_gate_timeout() && t.elapsed().as_secs() < 10, "{e}");
    let none = Redis::new(docker_client.clone(), &c, &target(None)).unwrap();
    let e = none.fingerprint().await.unwrap_err();
    assert!(e.to_string().contains("set `password_env`"), "{e}");

    // Redis cannot write its RDB: BGSAVE fails and the error says where and why.
    docker(&["exec", "-u", "0", &c, "chmod", "555", "/data"]);
    let mut sink: Vec<u8> = Vec::new();
    let e = redis
        .backup(&mut sink, &RedisBackupOptions::default())
        .await
        .unwrap_err();
    let m = e.to_string();
    eprintln!("bgsave refused: {m}");
    assert!(matches!(e, DbError::Refused { .. }), "{m}");
    assert!(
        m.contains("rdb_last_bgsave_status:err") && m.contains("`/data`"),
        "{m}"
    );
    assert!(sink.is_empty());
    docker(&["exec", "-u", "0", &c, "chmod", "755", "/data"]);

    // A good backup, then inputs a restore must refuse before it stops Redis.
    let mut rdb: Vec<u8> = Vec::new();
    let report = redis
        .backup(&mut rdb, &RedisBackupOptions::default())
        .await
        .unwrap();
    let fp = report.fingerprint.unwrap();
    let e = redis
        .restore(
            &mut &b"not an rdb at all"[..],
            &RedisRestoreOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, DbError::Invalid { .. }), "{e}");
    let truncated = &rdb[..rdb.len() / 2];
    let e = redis
        .restore(&mut &truncated[..], &RedisRestoreOptions::default())
        .await
        .unwrap_err();
    let m = e.to_string();
    eprintln!("truncated rdb: {m}");
    assert!(
        matches!(e, DbError::Invalid { .. }) && m.contains("redis-check-rdb"),
        "{m}"
    );
    // Redis kept running with its data, and no staging file is left behind.
    assert_eq!(
        crate::common::docker(&["inspect", "-f", "{{.State.Running}}", &c]),
        "true"
    );
    assert!(fp.compare(&redis.fingerprint().await.unwrap()).is_empty());
    let listing = docker(&["exec", &c, "ls", "-A", "/data"]);
    assert!(!listing.contains(".drctl-restore"), "{listing}");
    eprintln!("redis unhappy paths: {:.1} s", t0.elapsed().as_secs_f64());
}
