#!/usr/bin/env python3
"""Bench data for a volume directory: MIB mebibytes, half log-like text, half random.

    gendata.py DIR MIB

- logs/app-NNN.log: 32 MiB files of web-application log lines (timestamps, levels,
  request ids, paths, statuses, latencies, user agents), which zstd -3 stores in about a
  fifth of their size. One 32 MiB text is generated per 60 files (seeded, so every run
  benches the same bytes) and each file maps its digits and hex letters differently, so
  no two files share content: a deduplicating tool (restic) gets no free ride.
- blobs/blob-NNN.bin: 64 MiB files of random bytes (incompressible).
- sessions/: 2,000 small files (0.5 to 4 KiB), as a session store holds.
"""
import os
import random
import sys

PER_LOG = 32 << 20
PER_BLOB = 64 << 20


def log_text(seed: int) -> bytes:
    rnd = random.Random(seed)
    levels = ["INFO"] * 12 + ["DEBUG"] * 6 + ["WARN"] * 2 + ["ERROR"]
    methods = ["GET"] * 8 + ["POST"] * 3 + ["PUT", "DELETE"]
    paths = ["/api/v1/orders", "/api/v1/users/me", "/health", "/api/v1/cart/items",
             "/static/app.js", "/api/v1/search", "/login", "/api/v2/invoices",
             "/api/v1/products", "/metrics"]
    agents = ["Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", "curl/7.88.1",
              "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15",
              "okhttp/4.12.0", "python-requests/2.31.0"]
    msgs = ["request served", "cache miss, loading from database", "session refreshed",
            "slow query detected", "upstream timeout, retrying", "payment authorized",
            "user not found", "rate limit applied", "connection pool exhausted, waiting"]
    statuses = (200, 200, 200, 201, 204, 304, 404, 500)
    parts = []
    size = 0
    t = 1_750_000_000.0 + seed * 86400
    while size < PER_LOG:
        t += rnd.random() * 0.01
        it = int(t)
        line = (f"2026-{it % 12 + 1:02d}-{it % 28 + 1:02d}T{it % 24:02d}:{it // 60 % 60:02d}:"
                f"{t % 60:06.3f}Z {rnd.choice(levels)} req={rnd.getrandbits(64):016x} "
                f"{rnd.choice(methods)} {rnd.choice(paths)}?page={rnd.randrange(100)} "
                f"status={rnd.choice(statuses)} ms={rnd.randrange(2000)} "
                f"user={rnd.randrange(50000)} ua=\"{rnd.choice(agents)}\" "
                f"msg=\"{rnd.choice(msgs)}\"\n").encode()
        parts.append(line)
        size += len(line)
    return b"".join(parts)[:PER_LOG]


def table(i: int) -> bytes:
    digits, hexl = b"0123456789", b"abcdef"
    d, h = i % 10, (i // 10) % 6
    return bytes.maketrans(digits + hexl, digits[d:] + digits[:d] + hexl[h:] + hexl[:h])


def main() -> None:
    out, mib = sys.argv[1], int(sys.argv[2])
    total = mib << 20
    text_total = total // 2
    rand_total = total - text_total
    for sub in ("logs", "blobs", "sessions"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    base = None
    i = 0
    while text_total > 0:
        if i % 60 == 0:
            base = log_text(i // 60)
        n = min(PER_LOG, text_total)
        with open(os.path.join(out, "logs", f"app-{i:03d}.log"), "wb") as f:
            f.write(base[:n].translate(table(i)))
        text_total -= n
        i += 1
    i = 0
    with open("/dev/urandom", "rb") as r:
        while rand_total > 0:
            n = min(PER_BLOB, rand_total)
            with open(os.path.join(out, "blobs", f"blob-{i:03d}.bin"), "wb") as f:
                left = n
                while left:
                    b = r.read(min(left, 8 << 20))
                    f.write(b)
                    left -= len(b)
            rand_total -= n
            i += 1
    rnd = random.Random(11)
    for k in range(2000):
        body = "".join(f"{key}={rnd.getrandbits(128):032x}\n"
                       for key in ("sid", "csrf", "user", "cart", "flash")[: rnd.randrange(1, 6)])
        body = body * rnd.randrange(1, 16)
        with open(os.path.join(out, "sessions", f"sess_{rnd.getrandbits(64):016x}"), "w") as f:
            f.write(body)


main()
