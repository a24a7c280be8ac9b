#!/usr/bin/env python3
"""The bench's markdown: one table, the machine, the command, the targets.

    render.py RESULTS COMMAND

RESULTS holds `key value` lines written by scripts/bench.sh.
"""
import sys

r = {}
with open(sys.argv[1]) as f:
    for line in f:
        k, _, v = line.rstrip("\n").partition(" ")
        r[k] = v
command = sys.argv[2]


def num(k):
    try:
        return float(r[k])
    except (KeyError, ValueError):
        return None


def secs(k):
    v = num(k + ".s")
    return "" if v is None else f"{v:.1f}"


def mbps(k, size_key):
    s, b = num(k + ".s"), num(size_key)
    return "" if s is None or b is None or s == 0 else f"{b / 1e6 / s:.0f}"


def rss(k):
    v = num(k + ".rss_kib")
    return "" if v is None else f"{v / 1024:.0f}"


def speed(mine, other, label):
    """How many times as fast as `other` `mine` was (> 1: faster)."""
    a, b = num(mine + ".s"), num(other + ".s")
    if a is None or b is None or a == 0:
        return None
    return f"{b / a:.2f}× {label}"


def join(*xs):
    return ", ".join(x for x in xs if x)


rows = []


def row(part, what, tool, key, size_key=None, ratio="", notes="", show_rss=True):
    if num(key + ".s") is None:
        return
    tool = tool.replace(" | ", " \\| ")
    rounds = r.get(key + ".rounds", "")
    if rounds.count(",") >= 1:
        notes = join(f"median of {rounds.replace(',', ' / ')} s", notes)
    rows.append((part, what, tool, secs(key), mbps(key, size_key) if size_key else "",
                 rss(key) if show_rss else "", ratio, notes))


mib = lambda k: "" if num(k) is None else f"{num(k) / 2**20:.0f} MiB"
size = r.get("size_mib", "?")
enc = "zstd-3 + age" if r.get("encrypt") == "1" else "zstd-3"

# 1. volume
if "vol.bytes" in r:
    vb = "vol.bytes"
    what_b = f"volume backup ({mib(vb)}, {r.get('vol.files')} files)"
    row(1, what_b, "archive API floor (→ /dev/null)", "floor_backup", vb, show_rss=False)
    row(1, what_b, "raw pipeline (archive API → rclone rcat)", "raw_backup", vb, show_rss=False)
    row(1, what_b, "restic (host folder → S3)", "restic_backup", vb)
    row(1, what_b, f"**drctl, archive API** ({enc})", "api_backup", vb,
        join(speed("api_backup", "raw_backup", "raw"), speed("api_backup", "restic_backup", "restic")),
        f"stored {mib('vol.stored_bytes')} per set" if "vol.stored_bytes" in r else "")
    row(1, what_b, f"**drctl, host path** ({enc})", "host_backup", vb,
        join(speed("host_backup", "raw_backup", "raw"), speed("host_backup", "restic_backup", "restic")))
    what_r = f"volume restore ({mib(vb)})"
    def cpu(k, *who):
        """CPU seconds of the named processes in a measurement: ("drctl", "cpu_s"), ..."""
        parts = [f"{label} {num(f'{k}.{field}'):.1f} s" for label, field in who if num(f"{k}.{field}") is not None]
        return "CPU: " + ", ".join(parts) if parts else ""

    def vs_floor(k):
        a, b = num(k + ".s"), num("floor_restore.s")
        return f"{a / b:.2f}× the floor's time" if a and b else ""

    dockerd = ("dockerd", "dockerd_cpu_s")
    row(1, what_r, "archive API floor (local tar → API)", "floor_restore", vb, show_rss=False,
        notes=cpu("floor_restore", dockerd))
    row(1, what_r, "archive API floor, chunked (cat file \\| curl -T -)", "floor_chunked_restore", vb, show_rss=False,
        notes=cpu("floor_chunked_restore", dockerd))
    row(1, what_r, "archive API floor with drctl decoding the same object beside it (`backups verify`, local folder)",
        "floor_contended_restore", vb, show_rss=False, ratio=vs_floor("floor_contended_restore"),
        notes=cpu("floor_contended_restore", dockerd, ("curl and drctl", "cpu_s")))
    row(1, what_r, "drctl's volume restore code fed from the tar file (staged, nothing to decode: `restore_tar` example)",
        "tarfile_restore", vb, show_rss=False, ratio=vs_floor("tarfile_restore"),
        notes=cpu("tarfile_restore", ("it", "cpu_s"), dockerd))
    row(1, what_r, "drctl decoding the object alone (`backups verify`, local folder: read, SHA-256, age, zstd)",
        "decode_only", vb, show_rss=False, notes=cpu("decode_only", ("drctl", "cpu_s")))
    row(1, what_r, "raw pipeline (rclone cat → archive API)", "raw_restore", vb, show_rss=False,
        notes=cpu("raw_restore", dockerd, ("Garage", "garage_cpu_s")))
    row(1, what_r, "restic (S3 → host folder)", "restic_restore", vb)
    for mode, label in (("api", "archive API"), ("local", "archive API, local-folder repository"), ("host", "host path")):
        k = f"{mode}_restore"
        notes = []
        if num(k + ".verify_first") is not None:
            notes.append(f"checks before touching anything {num(k + '.verify_first'):.1f} s")
        if num(k + ".step.restore") is not None:
            notes.append(f"step {num(k + '.step.restore'):.1f} s")
        if num(k + ".overhead") is not None:
            notes.append(f"outside the step {num(k + '.overhead'):.1f} s")
        notes.append(cpu(k, ("drctl", "cpu_s"), dockerd, ("Garage", "garage_cpu_s")))
        ratio = join(
            vs_floor(k) if mode in ("api", "local") else "",
            speed(k, "raw_restore", "raw"),
            speed(k, "restic_restore", "restic"))
        row(1, what_r, f"**drctl, {label}** ({enc})", k, vb, ratio, "; ".join(n for n in notes if n))

# 2. PostgreSQL
if "pg.bytes" in r:
    pb = "pg.bytes"
    what = f"PostgreSQL backup ({mib(pb)} database, {r.get('pg.rows')} rows)"
    row(2, what, "pg_dump -Fc | rclone rcat", "pg_raw_backup", pb,
        notes=f"stored {mib('pg.raw_stored_bytes')}", show_rss=False)
    row(2, what, f"**drctl** (pg_dump -Fc -Z0, {enc}, fingerprint)", "pg_drctl_backup", pb,
        speed("pg_drctl_backup", "pg_raw_backup", "raw"), f"stored {mib('pg.drctl_stored_bytes')}")
    what = f"PostgreSQL restore ({mib(pb)} database)"
    row(2, what, "rclone cat | pg_restore --create", "pg_raw_restore", pb, show_rss=False)
    notes = []
    if num("pg_drctl_restore.verify_first") is not None:
        notes.append(f"checks before touching anything {num('pg_drctl_restore.verify_first'):.1f} s")
    row(2, what, "**drctl**", "pg_drctl_restore", pb,
        speed("pg_drctl_restore", "pg_raw_restore", "raw"), "; ".join(notes))

# 3. large volumes
if "large.bytes" in r:
    lb = "large.bytes"
    for mode, label in (("api", "archive API"), ("host", "host path")):
        row(3, f"volume backup ({mib(lb)})", f"**drctl, {label}**", f"large_{mode}_backup", lb)
        row(3, f"volume restore ({mib(lb)})", f"**drctl, {label}**", f"large_{mode}_restore", lb)

# 4. complete-failure
if "cf_run.s" in r:
    row(4, "backup of the stack (volume, database, Redis)", "**drctl backup**", "cf_backup")
    row(4, "complete-failure: RTO (whole `drctl run`)", "**drctl run complete-failure --yes**", "cf_run",
        notes="safety backups of what is overwritten included, as the runbook ships")
    for k, label in (("transfer", "data transfer (backup / restore / verify steps)"),
                     ("containers", "waiting for containers (stop / up / health steps)"),
                     ("other_steps", "other steps (confirm, notify)"),
                     ("overhead", "controller overhead (inside no step)")):
        v = num(f"cf_run.{k}")
        if v is None:
            continue
        notes = ""
        if k == "overhead":
            notes = (f"before the first step {num('cf_run.overhead_before'):.2f} s, between steps "
                     f"{num('cf_run.overhead_between'):.2f} s, after the last {num('cf_run.overhead_after'):.2f} s")
        rows.append((4, f"↳ {label}", "", f"{v:.2f}", "", "", f"{100 * v / num('cf_run.s'):.0f}% of RTO", notes))

print(f"## drctl benchmark, {r.get('date', '?')}\n")
print(f"Machine: {r.get('nproc')} cores ({r.get('cpu', '?').replace('_', ' ')}), "
      f"{int(r.get('mem_mib', 0)) / 1024:.0f} GiB memory, Docker {r.get('docker')}, "
      f"restic {r.get('restic')}, rclone {r.get('rclone')}, S3: Garage on loopback; "
      f"load average at the end {r.get('load', '?')}.  ")
print(f"Command: `{command}`  ")
print("MB/s is the volume's (or database's) size in 10^6 bytes over the wall time of the whole "
      "command; ratios are speed ratios (the other's time over drctl's: above 1 drctl is faster); "
      "peak RSS from GNU time.\n")
print("| part | measurement | tool | time (s) | MB/s | peak RSS (MiB) | ratio | notes |")
print("| --- | --- | --- | ---: | ---: | ---: | --- | --- |")
for row_ in rows:
    print("| " + " | ".join(str(x) for x in row_) + " |")

# Targets
print("\nTargets (issue 7):\n")


def verdict(ok):
    return "met" if ok else "**missed**"


def target(label, ok, detail):
    if ok is None:
        return
    print(f"- {label}: {verdict(ok)} ({detail})")


a, h, rb = num("api_backup.s"), num("host_backup.s"), num("restic_backup.s")
if a and rb:
    target("backup faster than restic", a < rb and (h is None or h < rb),
           f"API {a:.1f} s, host path {h or 0:.1f} s, restic {rb:.1f} s")
ar, fl = num("api_restore.s"), num("floor_restore.s")
if ar and fl:
    target("restore through the API within 15% of the archive-API floor", ar <= 1.15 * fl,
           f"{ar:.1f} s vs {fl:.1f} s: +{100 * (ar / fl - 1):.0f}%")
hr, rr = num("host_restore.s"), num("restic_restore.s")
if hr and rr:
    target("host-path restore faster than restic", hr < rr, f"{hr:.1f} s vs {rr:.1f} s")
peaks = {k[:-len(".rss_kib")]: num(k) / 1024 for k in r
         if k.endswith(".rss_kib") and any(k.startswith(p) for p in
                                          ("api_", "host_", "pg_drctl_", "large_", "cf_"))}
if peaks:
    worst = max(peaks, key=peaks.get)
    target("drctl peak memory under 100 MiB", peaks[worst] < 100,
           f"highest {peaks[worst]:.0f} MiB in {worst}")
ov = num("cf_run.overhead")
if ov is not None:
    target("controller overhead in complete-failure under 1 s", ov < 1.0, f"{ov:.2f} s")
