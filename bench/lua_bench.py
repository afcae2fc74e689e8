#!/usr/bin/env python3
"""Lua transforms, file -> file sink (release build): what a script costs the agent.

Ships the same generated log of ~200-byte lines (default 1 GiB) from scratch, interleaved
(none, noop, drop10, none, noop, drop10, ...), through:
  none:   no transform;
  noop:   a Lua transform that returns every record as it came;
  drop10: a Lua script that drops a tenth of the records and adds a field to the rest;
  match:  (with --cases) one guarded string.match per record, what the pattern guard costs.
Reports per run: wall seconds, records/s, MiB/s of input, agent CPU-s (and the user part of
them), peak RSS; then the median of each case and the Lua cases' throughput beside the untransformed one.

Usage: cargo build --release -p log-sensor && python3 bench/lua_bench.py
       [--bin BIN [--bin OTHER ...]] [--size-mib 1024] [--rounds 2]
       [--cases none,noop,drop10,match] [--workdir /dev/shm/log-sensor-lua-bench] [--keep]

With several --bin (e.g. a base build and yours), every round runs each case with each build
in turn (base none, yours none, base noop, yours noop, ...), so load on a shared machine hits
them alike; medians and ranges are then given per build.

With --fluent-bit BIN, each round also runs the same cases through Fluent Bit (tail -> filter_lua
-> file, `Format plain`: one JSON object a line), interleaved after the log-sensor builds; its
scripts do the same work in its API (FB_CASES). Fluent Bit is not in Debian's archive; build it
from its source (cmake -DFLB_MINIMAL=On -DFLB_IN_TAIL=On -DFLB_FILTER_LUA=On -DFLB_OUT_FILE=On
-DFLB_LUAJIT=On -DFLB_SQLDB=Off; its filter_lua runs LuaJIT). It has no store of committed
offsets, so a run ends when its output holds every record the case keeps (the output is read as
it grows, so waiting costs little CPU).

Figures are printed, never asserted: this machine is shared and noisy. The work folder is
removed at the end unless --keep.
"""
import argparse, os, shutil, statistics, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import agent_bench as ab  # noqa: E402  (the generator, the agent starter and /proc readers)

NOOP = "function process(rec) return rec end\n"
# A tenth dropped by a cheap test on the line (its request id's last digit), a field added.
DROP10 = """function process(rec)
  if rec.msg:byte(62) == 55 then return nil end
  rec.fields.env = "prod"
  return rec
end
"""

# What the pattern guard costs: one guarded string.match per record.
MATCH = """function process(rec)
  rec.fields.status = rec.msg:match("status=(%d+)")
  return rec
end
"""

# The same work through Fluent Bit's filter_lua (record = {log = line}; -1 drops, 0 keeps as
# is, 1 keeps the changed record).
FB_CASES = {
    "none": None,
    "noop": "function process(tag, ts, record) return 0, ts, record end\n",
    "drop10": """function process(tag, ts, record)
  if record.log:byte(62) == 55 then return -1, ts, record end
  record.env = "prod"
  return 1, ts, record
end
""",
    "match": """function process(tag, ts, record)
  record.status = record.log:match("status=(%d+)")
  return 1, ts, record
end
""",
}

CASES = {
    "none": None,
    "noop": NOOP,
    "drop10": DROP10,
    "match": MATCH,
}


def run(args, bin_, case, log, real, n):
    wd = os.path.join(args.workdir, case)
    shutil.rmtree(os.path.join(wd, "state"), ignore_errors=True)
    os.makedirs(os.path.join(wd, "logs"), exist_ok=True)
    target = os.path.join(wd, "logs", "input.log")
    if not os.path.exists(target):
        os.link(log, target)
    source = '[sources.bench]\npaths = ["logs/input.log"]\n'
    extra = ""
    if CASES[case] is not None:
        with open(os.path.join(wd, "t.lua"), "w") as f:
            f.write(CASES[case])
        source += 'transforms = ["t"]\n'
        extra = '[transforms.t]\ntype = "lua"\npath = "t.lua"\n'
    out = os.path.join(wd, "state", "out.ndjson")
    t0 = time.monotonic()
    p = ab.start_agent(bin_, wd, source, extra=extra, out=out, sync=False)
    while ab.committed(wd)[0] < real:
        if p.poll() is not None:
            sys.exit(f"agent exited early: see {wd}/agent.err")
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    cpu, user, rss = ab.cpu_seconds(p.pid), ab.user_seconds(p.pid), ab.peak_rss_mib(p.pid)
    threads = ab.thread_cpu(p.pid)
    ab.stop(p)
    out_lines = 0
    with open(out, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            out_lines += block.count(b"\n")
    os.remove(out)
    r = {"bin": bin_, "case": case, "secs": elapsed, "rps": n / elapsed,
         "mibs": real / 2**20 / elapsed, "cpu": cpu, "user": user, "rss": rss, "out": out_lines}
    print(f"  {label(args, bin_):>6s} {case:7s} {elapsed:6.2f} s  {r['rps']:>11,.0f} rec/s  {r['mibs']:6.1f} MiB/s  "
          f"CPU {cpu:6.2f} s ({n / cpu:>11,.0f} rec per CPU-s; user {user:6.2f} s, {n / user:>11,.0f})  peak RSS {rss:6.1f} MiB  "
          f"{out_lines} records out", flush=True)
    busy = sorted(((t, s) for t, s in threads.items() if s >= 0.05), key=lambda x: -x[1])
    print("           threads: " + ", ".join(f"{t} {s:.2f} s" for t, s in busy), flush=True)
    return r


def run_fluent_bit(args, case, log, real, n, kept):
    """One run of Fluent Bit on the case; ends when its output has every kept record."""
    wd = os.path.join(args.workdir, "fb-" + case)
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    target = os.path.join(wd, "input.log")
    os.link(log, target)
    filt = ""
    if FB_CASES[case] is not None:
        with open(os.path.join(wd, "t.lua"), "w") as f:
            f.write(FB_CASES[case])
        filt = (f"[FILTER]\n    Name lua\n    Match *\n    script {wd}/t.lua\n    call process\n")
    # Tuned for one big file read from its head: large read buffers, a short flush, no limit on
    # what it may buffer in memory (the input is bounded).
    conf = (f"[SERVICE]\n    Flush 0.1\n    Log_Level warn\n\n"
            f"[INPUT]\n    Name tail\n    Path {target}\n    Read_from_Head On\n"
            f"    Buffer_Chunk_Size 1M\n    Buffer_Max_Size 4M\n    Refresh_Interval 1\n\n"
            f"{filt}\n[OUTPUT]\n    Name file\n    Match *\n    Path {wd}\n    File out.json\n"
            f"    Format plain\n")
    with open(os.path.join(wd, "fb.conf"), "w") as f:
        f.write(conf)
    out = os.path.join(wd, "out.json")
    err = open(os.path.join(wd, "fb.err"), "w")
    t0 = time.monotonic()
    p = subprocess.Popen([args.fluent_bit, "-c", os.path.join(wd, "fb.conf")], stdout=err,
                         stderr=err, stdin=subprocess.DEVNULL)
    got, pos = 0, 0
    want = kept[case]
    while got < want:
        if p.poll() is not None:
            sys.exit(f"fluent-bit exited early: see {wd}/fb.err")
        if os.path.exists(out):
            with open(out, "rb") as f:
                f.seek(pos)
                block = f.read()
            pos += len(block)
            got += block.count(b"\n")
        if got < want:
            time.sleep(0.05)
    elapsed = time.monotonic() - t0
    cpu, user, rss = ab.cpu_seconds(p.pid), ab.user_seconds(p.pid), ab.peak_rss_mib(p.pid)
    p.kill()
    p.wait()
    shutil.rmtree(wd, ignore_errors=True)
    r = {"bin": "fluent-bit", "case": case, "secs": elapsed, "rps": n / elapsed,
         "mibs": real / 2**20 / elapsed, "cpu": cpu, "user": user, "rss": rss, "out": got}
    print(f"  {'fbit':>6s} {case:7s} {elapsed:6.2f} s  {r['rps']:>11,.0f} rec/s  {r['mibs']:6.1f} MiB/s  "
          f"CPU {cpu:6.2f} s ({n / cpu:>11,.0f} rec per CPU-s; user {user:6.2f} s, {n / user:>11,.0f})  "
          f"peak RSS {rss:6.1f} MiB  {got} records out", flush=True)
    return r


def kept_counts(log, n):
    """How many records each case keeps: drop10 drops lines whose 62nd byte is '7'."""
    dropped = 0
    with open(log, "rb") as f:
        for line in f:
            dropped += len(line) > 61 and line[61] == 55
    return {"none": n, "noop": n, "drop10": n - dropped, "match": n}


def main():
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--size-mib", type=int, default=1024)
    a.add_argument("--rounds", type=int, default=2)
    a.add_argument("--workdir", default="/dev/shm/log-sensor-lua-bench")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ab.ROOT, "target"))
    a.add_argument("--bin", action="append",
                   help="agent binary; repeat to interleave builds (default: this tree's release build)")
    a.add_argument("--keep", action="store_true")
    a.add_argument("--cases", default="none,noop,drop10", help="comma-separated, run in this order")
    a.add_argument("--fluent-bit", help="a fluent-bit binary to run the same cases through, interleaved")
    args = a.parse_args()
    args.bin = args.bin or [os.path.join(target, "release", "log-sensor")]
    os.makedirs(args.workdir, exist_ok=True)
    log = os.path.join(args.workdir, "input.log")
    print(f"generating {args.size_mib} MiB of ~200-byte lines ...", flush=True)
    n = ab.generate(log, args.size_mib << 20)
    real = os.path.getsize(log)
    print(f"{n} lines, {real / 2**20:.0f} MiB", flush=True)
    for b in args.bin:
        print(f"  {label(args, b)} = {b}", flush=True)
    results = []
    kept = kept_counts(log, n) if args.fluent_bit else None
    try:
        for i in range(args.rounds):
            print(f"round {i + 1}", flush=True)
            for case in args.cases.split(","):
                for b in args.bin:
                    results.append(run(args, b, case, log, real, n))
                if args.fluent_bit:
                    results.append(run_fluent_bit(args, case, log, real, n, kept))
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print("median [min-max] of each case:")
    cases = args.cases.split(",")
    for b in args.bin + (["fluent-bit"] if args.fluent_bit else []):
        med = {}
        for case in cases:
            rs = [r for r in results if r["case"] == case and r["bin"] == b]
            med[case] = {k: statistics.median(r[k] for r in rs) for k in ("secs", "rps", "mibs", "cpu", "user", "rss")}
            m = med[case]
            lo, hi = min(r["mibs"] for r in rs), max(r["mibs"] for r in rs)
            print(f"  {label(args, b):>6s} {case:7s} {m['mibs']:6.1f} MiB/s [{lo:.1f}-{hi:.1f}]  "
                  f"{m['rps']:>11,.0f} rec/s  CPU {m['cpu']:6.2f} s  {n / m['cpu']:>11,.0f} rec per CPU-s  "
                  f"(user {m['user']:6.2f} s, {n / m['user']:>11,.0f})  "
                  f"peak RSS {m['rss']:6.1f} MiB")
        for case in [c for c in cases if c != "none" and "none" in med]:
            cost = 1 - med[case]["mibs"] / med["none"]["mibs"]
            print(f"  {label(args, b):>6s} {case} costs {cost * 100:.0f}% of the untransformed throughput")


def label(args, bin_):
    """A short name for a build in the output: bin1, bin2, ... in the order given."""
    if bin_ == "fluent-bit":
        return "fbit"
    return f"bin{args.bin.index(bin_) + 1}" if len(args.bin) > 1 else "agent"


if __name__ == "__main__":
    main()
