#!/usr/bin/env python3
"""Benchmark of the osquery logger's per-call cost against the size of its outbox (issue #10
item 7): the real extension binary (release build) driven by the stand-in osqueryd
(tests/osquery_standin/manager.py, osquery's published Python bindings) as fast as it can.

For each outbox size, a fresh state dir; the extension registers, osqueryd's logger init runs,
one call creates the outbox, then the outbox is filled to the size straight through SQLite (what
that many calls leave behind when no agent ships) and the stand-in makes --calls `string` calls
in event format, one per row, each after a ping on its own connection as osqueryd does. No agent
runs, so the outbox only grows.

Reported per size: calls/s over the calls (the median of --chunks chunks, the slowest, the
first and the last chunk, and overall), and the extension's own CPU time per call from /proc. By default the outbox's cap is
raised above every size (--max-rows), so only the cap check is measured, not the drops; `full`
adds a run at exactly the cap, where every call drops the oldest row.

Usage: cargo build --release -p log-sensor-extension &&
       .venv/bin/python bench/outbox_bench.py [--binary LABEL=PATH ...] [--rows 0,10000,100000]
       [--calls 2000] [--full] [--workdir /var/tmp/log-sensor-outbox-bench]
The issue's run (100,000 calls into an empty outbox at the default cap):
       .venv/bin/python bench/outbox_bench.py --rows 0 --calls 100000 --max-rows 100000

Figures are printed, never asserted: this machine is shared and noisy.
"""
import argparse, json, os, shutil, sqlite3, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK = os.sysconf("SC_CLK_TCK")
STANDIN = os.path.join(ROOT, "tests", "osquery_standin", "manager.py")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def record(i):
    """A result row in osquery's event format, as the stand-in writes them (~330 bytes)."""
    return json.dumps({
        "name": "pack_nginx_errors", "hostIdentifier": "standin-host",
        "calendarTime": "Thu Nov 26 15:43:03 2026 UTC", "unixTime": 1795707783, "epoch": 0,
        "counter": i, "numerics": False,
        "columns": {"line": f"2026/11/26 15:43:03 [error] 1234#0: *{i} open() failed (2: No such file)"},
        "action": "added"}, separators=(",", ":"))


class Standin:
    def __init__(self, wd):
        self.socket = os.path.join(wd, "em.sock")
        self.p = subprocess.Popen(
            [sys.executable, STANDIN, "--socket", self.socket, "--watch-interval", "5"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self.p.stdout.readline()
        if "listening" not in first:
            sys.exit(f"the stand-in did not start: {first!r}")

    def try_cmd(self, **c):
        self.p.stdin.write(json.dumps(c) + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def cmd(self, **c):
        r = self.try_cmd(**c)
        if not r["ok"]:
            sys.exit(f"stand-in command {c['cmd']} failed: {r['error']}")
        return r["result"]

    def stop(self):
        self.p.kill()
        self.p.wait()


def fill(db, n):
    """Leaves exactly n rows in the outbox (the first call's row goes too)."""
    c = sqlite3.connect(db, timeout=30)
    with c:
        c.execute("DELETE FROM outbox")
        c.executemany(
            "INSERT INTO outbox (time, kind, name, category, record) VALUES (?, 'result', ?, 'event', ?)",
            ((1795707783, "pack_nginx_errors", record(i)) for i in range(n)))
    (rows,) = c.execute("SELECT COUNT(*) FROM outbox").fetchone()
    c.close()
    return rows


def run(binary, wd, rows, calls, chunks, max_rows):
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    cfg = os.path.join(wd, "log-sensor.toml")
    with open(cfg, "w") as f:
        f.write('host_id = "bench-host"\nstate_dir = "state"\n')
    core = Standin(wd)
    err = open(os.path.join(wd, "extension.err"), "w")
    # osqueryd's argv for an extension (osquery/core/process/posix/process.cpp).
    ext = subprocess.Popen([binary, "--socket", core.socket, "--timeout", "60", "--interval", "5",
                            "--config", cfg, "--outbox-max-rows", str(max_rows)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        uuid = core.cmd(cmd="wait_registered", name="log_sensor", timeout=60)["uuid"]
        # The extension binds its own socket only after registering: wait until it answers.
        deadline = time.monotonic() + 60
        while True:
            r = core.try_cmd(cmd="call", uuid=uuid, registry="logger", item="log_sensor",
                             request={"init": "osqueryd"})
            if r["ok"] and r["result"]["code"] == 0:
                break
            if time.monotonic() > deadline:
                sys.exit(f"the extension never answered: {r}")
            time.sleep(0.1)
        # The first call creates the outbox; then it is filled to the size.
        core.cmd(cmd="log_results", uuid=uuid, name="pack_nginx_errors", added=[{"line": "first"}])
        db = os.path.join(wd, "state", "osquery-outbox.db")
        held = fill(db, rows)
        per_chunk = calls // chunks
        rates = []
        cpu0, t0 = cpu_seconds(ext.pid), time.monotonic()
        for k in range(chunks):
            added = [{"line": f"2026/11/26 15:43:03 [error] 1234#0: *{k}-{i} open() failed"}
                     for i in range(per_chunk)]
            t = time.monotonic()
            r = core.cmd(cmd="log_results", uuid=uuid, name="pack_nginx_errors", mode="event", added=added)
            rates.append(per_chunk / (time.monotonic() - t))
            bad = [c for c in r["calls"] if c["code"] != 0]
            if bad:
                sys.exit(f"a logger call failed: {bad[0]}")
        wall, cpu = time.monotonic() - t0, cpu_seconds(ext.pid) - cpu0
        c = sqlite3.connect(db, timeout=30)
        (after,) = c.execute("SELECT COUNT(*) FROM outbox").fetchone()
        c.close()
        made = per_chunk * chunks
        return {"rows": held, "after": after, "calls": made, "median": statistics.median(rates),
                "slowest": min(rates), "first": rates[0], "last": rates[-1], "overall": made / wall,
                "cpu_ms": cpu / made * 1000}
    finally:
        ext.kill()
        ext.wait()
        core.stop()
        err.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", action="append", default=[],
                    help="LABEL=PATH of an extension binary; repeat to compare builds "
                         "(default new=target/release/log-sensor-extension)")
    ap.add_argument("--rows", default="0,10000,100000", help="outbox sizes, comma-separated")
    ap.add_argument("--calls", type=int, default=2000, help="logger calls measured per size")
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--max-rows", type=int, default=1_000_000, help="--outbox-max-rows for the sizes")
    ap.add_argument("--full", action="store_true",
                    help="also a run at exactly the default cap (100000 rows): every call drops one")
    ap.add_argument("--workdir", default="/var/tmp/log-sensor-outbox-bench")
    args = ap.parse_args()
    binaries = [b.split("=", 1) for b in args.binary] or [
        ["new", os.path.join(ROOT, "target", "release", "log-sensor-extension")]]
    for label, path in binaries:
        if not os.path.exists(path):
            sys.exit(f"{label}: {path} missing: cargo build --release -p log-sensor-extension")
    cases = [(int(r), args.max_rows) for r in args.rows.split(",")]
    if args.full:
        cases.append((100_000, 100_000))
    print(f"{args.calls} logger calls per case; work dir {args.workdir}")
    print(f"{'build':<6} {'outbox rows':>11} {'cap':>9} {'calls/s median':>15} {'slowest chunk':>14} "
          f"{'first/last chunk':>17} {'overall':>8} {'ext CPU ms/call':>16} {'rows after':>10}")
    for label, path in binaries:
        for rows, cap in cases:
            r = run(path, os.path.join(args.workdir, label), rows, args.calls, args.chunks, cap)
            print(f"{label:<6} {r['rows']:>11,} {cap:>9,} {r['median']:>15,.0f} {r['slowest']:>14,.0f} "
                  f"{r['first']:>8,.0f}/{r['last']:<8,.0f} {r['overall']:>8,.0f} {r['cpu_ms']:>16.3f} {r['after']:>10,}", flush=True)


if __name__ == "__main__":
    main()
