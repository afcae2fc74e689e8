#!/usr/bin/env python3
"""Parser transforms, file -> file sink (release build): what json and regex cost the agent.

Two generated logs of ~200-byte lines (default 1 GiB each): JSON objects, and nginx combined
lines. Interleaved runs (nginx-none, nginx-regex, json-none, json-json, ...), each shipping its
log from scratch:
  nginx-none / json-none: no transform (the baseline for that log);
  nginx-regex: the issue's nginx pattern, six named groups into fields;
  json-json:   the json parser, every key into fields.
Reports per run: wall seconds, records/s, MiB/s of input, agent CPU-s, peak RSS; then medians
and each parser's throughput beside its baseline.

Usage: cargo build --release -p log-sensor && python3 bench/parsers_bench.py
       [--bin BIN [--bin OTHER ...]] [--size-mib 1024] [--rounds 2]
       [--workdir /dev/shm/log-sensor-parsers-bench] [--keep]

With several --bin (e.g. a base build and yours), every round runs each case with each build
in turn, so load on a shared machine hits them alike; medians and ranges are given per build.

Figures are printed, never asserted: this machine is shared and noisy. The work folder is
removed at the end unless --keep.
"""
import argparse, os, shutil, statistics, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import agent_bench as ab  # noqa: E402  (the agent starter and /proc readers)

NGINX = (r'^(?P<client>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+)[^"]*" '
         r'(?P<status>\d{3}) (?P<bytes>\d+)')


def nginx_line(i):
    return (f'203.0.{i % 256}.{i % 251} - - [05/Mar/2024:10:{i // 60 % 60:02}:{i % 60:02} +0000] '
            f'"GET /api/v1/items/{i}?page={i % 10} HTTP/1.1" {200 + i % 3} {1000 + i % 9000} '
            f'"https://example.com/list" "Mozilla/5.0 (X11; Linux x86_64) curl/8.5.0"\n')


def json_line(i):
    return (f'{{"time":"2024-03-05T10:{i // 60 % 60:02}:{i % 60:02}.{i % 1000:03}Z","level":"info",'
            f'"pid":{i % 32768},"req":{{"method":"GET","url":"/api/v1/items/{i}","status":200}},'
            f'"took_ms":{i % 997},"msg":"request completed for user {i % 100000}"}}\n')


def generate(path, size, line):
    n = 0
    with open(path, "w", buffering=1 << 20) as f:
        written = 0
        while written < size:
            block = "".join(line(n + k) for k in range(10000))
            f.write(block)
            written += len(block)
            n += 10000
    return n


CASES = {
    "nginx-none": ("nginx", None),
    "nginx-regex": ("nginx", f"[transforms.t]\ntype = \"regex\"\npattern = '{NGINX}'\n"),
    "json-none": ("json", None),
    "json-json": ("json", "[transforms.t]\ntype = \"json\"\n"),
}


def run(args, bin_, case, logs):
    kind, extra = CASES[case]
    log, real, n = logs[kind]
    wd = os.path.join(args.workdir, case)
    shutil.rmtree(os.path.join(wd, "state"), ignore_errors=True)
    os.makedirs(os.path.join(wd, "logs"), exist_ok=True)
    target = os.path.join(wd, "logs", "input.log")
    if not os.path.exists(target):
        os.link(log, target)
    source = '[sources.bench]\npaths = ["logs/input.log"]\n'
    if extra:
        source += 'transforms = ["t"]\n'
    out = os.path.join(wd, "state", "out.ndjson")
    t0 = time.monotonic()
    p = ab.start_agent(bin_, wd, source, extra=extra or "", out=out, sync=False)
    while ab.committed(wd)[0] < real:
        if p.poll() is not None:
            sys.exit(f"agent exited early: see {wd}/agent.err")
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    cpu, rss = ab.cpu_seconds(p.pid), ab.peak_rss_mib(p.pid)
    ab.stop(p)
    with open(out, "rb") as f:
        first = f.readline()
    os.remove(out)
    if extra and b'"fields"' not in first:
        sys.exit(f"{case}: the first record has no fields: {first[:300]!r}")
    r = {"bin": bin_, "case": case, "secs": elapsed, "rps": n / elapsed,
         "mibs": real / 2**20 / elapsed, "cpu": cpu, "rss": rss}
    print(f"  {label(args, bin_):>6s} {case:12s} {elapsed:6.2f} s  {r['rps']:>11,.0f} rec/s  {r['mibs']:6.1f} MiB/s  "
          f"CPU {cpu:6.2f} s ({n / cpu:>11,.0f} rec per CPU-s)  peak RSS {rss:6.1f} MiB", flush=True)
    return r


def main():
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--size-mib", type=int, default=1024)
    a.add_argument("--rounds", type=int, default=2)
    a.add_argument("--workdir", default="/dev/shm/log-sensor-parsers-bench")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ab.ROOT, "target"))
    a.add_argument("--bin", action="append",
                   help="agent binary; repeat to interleave builds (default: this tree's release build)")
    a.add_argument("--keep", action="store_true")
    args = a.parse_args()
    args.bin = args.bin or [os.path.join(target, "release", "log-sensor")]
    os.makedirs(args.workdir, exist_ok=True)
    logs = {}
    results = []
    try:
        for kind, line in (("nginx", nginx_line), ("json", json_line)):
            path = os.path.join(args.workdir, f"{kind}.log")
            n = generate(path, args.size_mib << 20, line)
            logs[kind] = (path, os.path.getsize(path), n)
            print(f"{kind}: {n} lines, {logs[kind][1] / 2**20:.0f} MiB", flush=True)
        for b in args.bin:
            print(f"  {label(args, b)} = {b}", flush=True)
        for i in range(args.rounds):
            print(f"round {i + 1}", flush=True)
            for case in CASES:
                for b in args.bin:
                    results.append(run(args, b, case, logs))
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print("median [min-max] of each case:")
    for b in args.bin:
        med = {}
        for case in CASES:
            rs = [r for r in results if r["case"] == case and r["bin"] == b]
            med[case] = {k: statistics.median(r[k] for r in rs) for k in ("secs", "rps", "mibs", "cpu", "rss")}
            m = med[case]
            lo, hi = min(r["mibs"] for r in rs), max(r["mibs"] for r in rs)
            print(f"  {label(args, b):>6s} {case:12s} {m['mibs']:6.1f} MiB/s [{lo:.1f}-{hi:.1f}]  "
                  f"{m['rps']:>11,.0f} rec/s  CPU {m['cpu']:6.2f} s  peak RSS {m['rss']:6.1f} MiB")
        for case, base in (("nginx-regex", "nginx-none"), ("json-json", "json-none")):
            cost = 1 - med[case]["mibs"] / med[base]["mibs"]
            print(f"  {label(args, b):>6s} {case} costs {cost * 100:.0f}% of {base}'s throughput")


def label(args, bin_):
    """A short name for a build in the output: bin1, bin2, ... in the order given."""
    return f"bin{args.bin.index(bin_) + 1}" if len(args.bin) > 1 else "agent"


if __name__ == "__main__":
    main()
