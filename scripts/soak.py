#!/usr/bin/env python3
"""Soak test, run by hand: mixed load for a while with random
disconnects and lock timeouts, then the checks that matter:

- RSS flat: sampled every few seconds; after a warm-up (--warmup-minutes,
  default 2: the allocator and SQLite's page caches fill), the last third's
  median may not exceed the first third's by more than --rss-growth (default
  20 %). Data growth is kept out of the figure: histories are read only for
  "archive" users whose histories are written before the load and never under
  it (a history answer holds up to 10,000 rows, so the history of a user
  written under load grows the answer, and the heap, with the run up to that
  cap; --read-growing-histories reads those too, the first runs' workload). RSS per minute is printed.
- 0 lock entries afterwards (GET /stats: lock.keys == 0, lock.waiters == 0);
- every user consistent: balance == sum(CHARGE) - sum(USE) of its history, and
  every acknowledged charge (unique amounts) is in it.

    scripts/soak.py [--minutes 10] [--store sqlite:/tmp/soak.db] [--bin target/release/pointlock]

Loopback only; every loop is bounded by the deadline. Prints a JSON summary on
the last line (docs/reliability.md quotes it).
"""

import argparse
import http.client
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def request(addr, method, path, body=b"", extra="", close_early=False, timeout=10.0):
    """One request on its own connection: (status, body) or None when the
    connection failed or was dropped on purpose (close_early)."""
    host, port = addr
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        if close_early:
            # Send part (or all) of the request, then vanish.
            cut = random.randint(0, len(head) + len(body))
            s.sendall((head + body)[:cut])
            return None
        s.sendall(head + body)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
        raw = b"".join(chunks)
        if len(raw) < 12:
            return None
        status = int(raw[9:12])
        return status, raw.split(b"\r\n\r\n", 1)[1]
    except OSError:
        return None
    finally:
        s.close()


def history(addr, user, timeout=30):
    """A user's whole history, following the `Link: <...>; rel="next"` pages."""
    rows, path = [], f"/point/{user}/histories"
    for _ in range(100_000):  # bounded: a page holds up to 10,000 rows
        conn = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            rows.extend(json.loads(response.read()))
            link = response.getheader("link")
        finally:
            conn.close()
        if not link:
            return rows
        path = link.split(">", 1)[0].lstrip("<")
    raise RuntimeError(f"user {user}: history pages without end")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--store", default=None, help="default: a SQLite file in a temp dir")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "pointlock"))
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--rss-growth", type=float, default=0.20)
    ap.add_argument("--lock-timeout-ms", type=int, default=50,
                    help="the server's lock timeout: short enough that the hot user's queue times out")
    ap.add_argument("--warmup-minutes", type=float, default=2.0)
    ap.add_argument("--archive-users", type=int, default=20,
                    help="users with a fixed history (written before the load), whose histories are read")
    ap.add_argument("--archive-rows", type=int, default=500)
    ap.add_argument("--read-growing-histories", action="store_true",
                    help="also read the histories of users written under load (not the hot user's)")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="pointlock-soak-")
    store = args.store or f"sqlite:{work}/soak.db"
    server = subprocess.Popen(
        [args.bin, "--store", store, "--addr", "127.0.0.1:0", "--lock-timeout-ms", str(args.lock_timeout_ms),
         "--max-balance", "9000000000000000000"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    addr = None
    for line in server.stderr:
        m = re.search(r"listening on http://([0-9.]+):(\d+)", line)
        if m:
            addr = (m.group(1), int(m.group(2)))
            break
    if addr is None:
        sys.exit("pointlock did not start")
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()

    # The archive users: ids above the written ones, each with a history of
    # --archive-rows charges, written before the load and never under it.
    archive = list(range(args.users + 1, args.users + 1 + args.archive_users))
    for user in archive:
        for _ in range(args.archive_rows):
            r = request(addr, "PATCH", f"/point/{user}/charge", b"1")
            if r is None or r[0] != 200:
                sys.exit(f"seeding archive user {user} failed: {r}")

    started = time.monotonic()
    deadline = started + args.minutes * 60
    lock = threading.Lock()
    acked = []  # (user, amount, kind)
    counts = {"requests": 0, "dropped": 0, "lock_timeouts": 0, "ok": 0, "refused": 0, "other": 0}
    next_amount = [1]

    def unique_amount():
        with lock:
            n = next_amount[0]
            next_amount[0] += 1
            return n

    def worker(seed):
        rnd = random.Random(seed)
        while time.monotonic() < deadline:
            # One hot user (lock timeouts under contention), the rest spread.
            user = 1 if rnd.random() < 0.3 else rnd.randint(2, args.users)
            roll = rnd.random()
            drop = rnd.random() < 0.05
            if roll < 0.55:
                amount = unique_amount()
                body = json.dumps({"amount": amount}).encode() if rnd.random() < 0.5 else str(amount).encode()
                r = request(addr, "PATCH", f"/point/{user}/charge", body, close_early=drop)
                kind = "CHARGE"
            elif roll < 0.75:
                amount = rnd.randint(1, 50)
                r = request(addr, "PATCH", f"/point/{user}/use", str(amount).encode(), close_early=drop)
                kind = "USE"
            else:
                # A history answer grows with the data up to 10,000 rows, so
                # histories growing under load are not read (unless asked):
                # their answers would grow the heap with the data. The hot
                # user's, growing by thousands of rows a minute, never is.
                # Every history is read (and checked) at the end, page by page.
                if roll >= 0.9:
                    if args.read_growing_histories and user != 1:
                        path = f"/point/{user}/histories"
                    elif archive:
                        path = f"/point/{rnd.choice(archive)}/histories"
                    else:
                        path = f"/point/{user}"
                else:
                    path = f"/point/{user}"
                r = request(addr, "GET", path, close_early=drop)
                kind = None
            with lock:
                counts["requests"] += 1
                if r is None:
                    counts["dropped"] += 1
                    continue
                status, body = r
                if status == 200:
                    counts["ok"] += 1
                    if kind == "CHARGE":
                        acked.append((user, amount))
                elif status == 503 and b"LOCK_TIMEOUT" in body:
                    counts["lock_timeouts"] += 1
                elif status == 409:
                    counts["refused"] += 1
                else:
                    counts["other"] += 1
                    print(f"unexpected {status}: {body[:200]!r}", file=sys.stderr)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.threads)]
    for t in threads:
        t.start()
    samples = []  # (seconds since start, RSS KiB)
    while time.monotonic() < deadline:
        samples.append((time.monotonic() - started, rss_kib(server.pid)))
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
    for t in threads:
        t.join(timeout=30)
    time.sleep(1.0)  # let requests of dropped connections finish under their locks
    samples.append((time.monotonic() - started, rss_kib(server.pid)))

    failures = []
    stats = json.loads(request(addr, "GET", "/stats")[1])
    if stats["lock"]["keys"] != 0 or stats["lock"]["waiters"] != 0:
        failures.append(f"lock entries left: {stats['lock']}")
    by_user = {}
    for user, amount in acked:
        by_user.setdefault(user, set()).add(amount)
    users_checked = 0
    for user in list(range(1, args.users + 1)) + archive:
        rows = history(addr, user)
        balance = json.loads(request(addr, "GET", f"/point/{user}")[1])["point"]
        replay = sum(r["amount"] if r["type"] == "CHARGE" else -r["amount"] for r in rows)
        if replay != balance:
            failures.append(f"user {user}: balance {balance} != history {replay}")
        charged = {r["amount"] for r in rows if r["type"] == "CHARGE"}
        missing = by_user.get(user, set()) - charged
        if missing:
            failures.append(f"user {user}: acknowledged charges missing: {sorted(missing)[:5]}")
        users_checked += 1
    for user in archive:
        rows = history(addr, user)
        if len(rows) != args.archive_rows:
            failures.append(f"archive user {user}: {len(rows)} rows, not {args.archive_rows}")
    steady = [rss for at, rss in samples if at >= args.warmup_minutes * 60] or [rss for _, rss in samples]
    third = max(1, len(steady) // 3)
    first, last = statistics.median(steady[:third]), statistics.median(steady[-third:])
    per_minute = {}
    for at, rss in samples:
        per_minute.setdefault(int(at // 60), rss)
    if last > first * (1 + args.rss_growth):
        failures.append(f"RSS grew: median {first} KiB in the first third, {last} KiB in the last")
    server.terminate()
    server.wait(timeout=60)
    summary = {
        "minutes": args.minutes, "warmup_minutes": args.warmup_minutes,
        "lock_timeout_ms": args.lock_timeout_ms,
        "archive_users": len(archive), "read_growing_histories": args.read_growing_histories, "store": store.split(":")[0], "threads": args.threads,
        **counts, "acknowledged_charges": len(acked), "users_checked": users_checked,
        "rss_kib_first_third_median": first, "rss_kib_last_third_median": last,
        "rss_kib_max": max(rss for _, rss in samples),
        "rss_kib_by_minute": [per_minute[m] for m in sorted(per_minute)], "lock_after": stats["lock"], "failures": failures,
    }
    print(json.dumps(summary))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
