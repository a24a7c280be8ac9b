#!/usr/bin/env python3
"""Split the wall time of one `drctl run` by what it spent it on, from its journal.

    journal.py RUN_DIR T_START T_END

T_START / T_END: epoch seconds taken just before the process started and after it ended.
Prints `key value` lines (seconds):

- transfer: time inside backup / restore / verify steps (the union: parallel steps
  overlap);
- containers: time inside stop / start / restart / up / down / health steps, outside
  transfer steps;
- other_steps: confirm / notify / exec steps, outside the above;
- overhead: wall time inside no step at all: before the first step started (process
  start, config, Docker and repository set-up, lock, journal), between steps, and after
  the last one finished (report, exit); also each of these three parts;
- verify_first: for restore steps, from the step's start to its "verified ... before
  touching anything" progress line (the repository check that precedes any restore);
- step.<id>: each step's duration as the journal recorded it.
"""
import json
import sys
from datetime import datetime

TRANSFER = {"backup", "restore", "verify"}
CONTAINERS = {"stop", "start", "restart", "up", "down", "health"}


def ts(s: str) -> float:
    # RFC 3339 with up to 9 fractional digits; Python takes 6.
    s = s.rstrip("Z")
    if "." in s:
        head, frac = s.split(".", 1)
        s = f"{head}.{frac[:6]:0<6}"
    return datetime.fromisoformat(s + "+00:00").timestamp()


def union(iv):
    out = []
    for s, e in sorted(iv):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def length(iv):
    return sum(e - s for s, e in iv)


def minus(a, b):
    """Intervals of `a` not covered by `b` (both unions)."""
    out = []
    for s, e in a:
        cur = s
        for bs, be in b:
            if be <= cur or bs >= e:
                continue
            if bs > cur:
                out.append([cur, bs])
            cur = max(cur, be)
        if cur < e:
            out.append([cur, e])
    return out


def main():
    run_dir, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    started, kinds, spans, verified = {}, {}, {}, {}
    first_event = last_event = None
    with open(f"{run_dir}/journal.jsonl") as f:
        for line in f:
            ev = json.loads(line)
            at = ts(ev["at"])
            first_event = at if first_event is None else first_event
            last_event = at
            kind = ev.get("event")
            if kind == "step_started":
                started.setdefault(ev["id"], at)
                kinds[ev["id"]] = ev.get("kind", "")
            elif kind == "step_finished" and ev["id"] in started:
                spans[ev["id"]] = (started[ev["id"]], at)
            elif kind == "step_progress" and "before touching anything" in ev.get("message", ""):
                verified.setdefault(ev["id"], at)
    by = {"transfer": [], "containers": [], "other": []}
    for sid, (s, e) in spans.items():
        k = kinds.get(sid, "")
        if k == "parallel":
            continue
        group = "transfer" if k in TRANSFER else "containers" if k in CONTAINERS else "other"
        by[group].append((s, e))
    transfer = union(by["transfer"])
    containers = minus(union(by["containers"]), transfer)
    other = minus(minus(union(by["other"]), transfer), union(by["containers"]))
    steps = union(by["transfer"] + by["containers"] + by["other"])
    total = t1 - t0
    first = steps[0][0] if steps else t1
    last = steps[-1][1] if steps else t1
    between = (last - first) - length(steps) if steps else 0.0
    print(f"total {total:.2f}")
    print(f"transfer {length(transfer):.2f}")
    print(f"containers {length(containers):.2f}")
    print(f"other_steps {length(other):.2f}")
    print(f"overhead {total - length(steps):.2f}")
    print(f"overhead_before {first - t0:.2f}")
    print(f"overhead_between {between:.2f}")
    print(f"overhead_after {t1 - last:.2f}")
    v = [verified[i] - started[i] for i in verified if i in started]
    if v:
        print(f"verify_first {max(v):.2f}")
    for sid, (s, e) in sorted(spans.items(), key=lambda x: x[1][0]):
        print(f"step.{sid} {e - s:.2f}")


main()
