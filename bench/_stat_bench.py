#!/usr/bin/env python3
"""Shipping benchmarks (release builds), end to end, printing figures (never asserting).

  syslog:    a generated file (default 2,000,000 lines of ~210 bytes, 400 MiB) -> the syslog sink
             over mutual TLS -> bench/shipping_receiver.rs on loopback, which only counts frames.
             Interleaved rounds (--rounds) of the ceiling (bench/tls_ceiling.rs: the same file
             read in 1 MiB buffers, encrypted and sent raw to the same receiver) and the agent with
             each [sink] structured_data choice (--structured-data full,minimal,none). Reports
             MiB/s of input from start to the last commit (for the ceiling: to the receiver's
             close), its share of the same round's ceiling, CPU-seconds, peak RSS, bytes on the
             wire, and the load average.
  collector: the same file -> the collector sink over mutual TLS -> log-sensor-collector on
             loopback (which stores every record and fsyncs each batch before its reply), with
             each --compression, in interleaved rounds with the TLS ceiling (as above) and, with
             --baseline-target, another build's agent and collector. The collector's data and the
             agent's state are under --workdir (/dev/shm for tmpfs). Reports MiB/s end to end
             (until every offset is committed, i.e. the collector acknowledged everything), its
             share of the same round's ceiling, CPU-seconds and peak RSS of both processes.

Usage:
  cargo build --release -p log-sensor -p log-sensor-collector --bins --example shipping_receiver \
      --example tls_ceiling
  python3 bench/shipping_bench.py [syslog|collector|all] [--lines 2000000] [--max-wait 1s]
          [--rounds 5] [--structured-data full,minimal,none] [--baseline OTHER_AGENT_BINARY]
          [--compression none,default] [--baseline-target OTHER_TARGET_DIR]
          [--workdir /var/tmp/log-sensor-shipbench] [--target target] [--profile]

Both processes share this machine's cores; the figures include the receiver's work.
"""
import argparse, os, shutil, signal, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from agent_bench import CommittedPoll, cpu_seconds, peak_rss_mib, thread_cpu, stop  # noqa: E402


def line(i):
    # ~210 bytes, like the workload.
    return (f"2026-11-26T10:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z INFO [worker-{i % 8}] "
            f"request id={i:010d} method=GET path=/api/v1/items/{i % 5000} status=200 bytes={i % 9000} "
            f"latency_ms={i % 250} ua=\"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\"\n")


def generate(path, n):
    if os.path.exists(path):
        with open(path, "rb") as f:
            if sum(1 for _ in f) == n:
                return
    with open(path, "w", buffering=1 << 20) as f:
        for start in range(0, n, 10000):
            f.write("".join(line(k) for k in range(start, min(n, start + 10000))))


BATCH_EXTRA = ""  # more [batch] keys, from --batch


def agent_dir(wd, log, sink, max_wait):
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(os.path.join(wd, "logs"))
    os.link(log, os.path.join(wd, "logs", "input.log"))
    with open(os.path.join(wd, "agent.toml"), "w") as f:
        f.write(f'host_id = "bench-host"\nstate_dir = "state"\n'
                f'[sources.bench]\npaths = ["logs/input.log"]\n[batch]\nmax_wait = "{max_wait}"\n'
                f'{BATCH_EXTRA}\n[sink]\n{sink}\n')
    return os.path.join(wd, "agent.toml")


def run_agent(bin_, cfg, wd, size, done_extra=lambda: True, profile=None):
    """Starts the agent, waits until every offset is committed; returns (elapsed, cpu, rss).
    With `profile` (a path), the agent runs under `perf record -g` writing there."""
    err = open(os.path.join(wd, "agent.err"), "w")
    t0 = time.monotonic()
    cmd = [bin_, "-c", cfg, "run"]
    if profile:
        # perf execs the agent: the pid measured below is the agent's own.
        cmd = ["perf", "stat", "-e", "instructions:u,cycles:u", "-x", ",", "-o", profile, "--"] + cmd
    p = subprocess.Popen(cmd, stderr=err, stdin=subprocess.DEVNULL, env=dict(os.environ, LOG_SENSOR_LOG=os.environ.get("LOG_SENSOR_LOG", "info")))
    # The end is seen within a few ms (a run lasts about a second): a kept read-only connection
    # costs ~3 us a query where opening one costs ~340 us, so polling every 2 ms takes ~0.2% of
    # a core from the processes measured.
    store = CommittedPoll(wd)
    while not done_extra() or store.offsets() < size:
        if p.poll() is not None:
            sys.exit(f"agent exited early: see {wd}/agent.err")
        time.sleep(0.002)
    elapsed = time.monotonic() - t0
    store.close()
    cpu, rss = cpu_seconds(p.pid), peak_rss_mib(p.pid)
    threads = thread_cpu(p.pid)
    print("  agent CPU by thread: " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(threads.items(), key=lambda kv: -kv[1])
                                                 if v > 0), flush=True)
    stop(p)
    return elapsed, cpu, rss


def load():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def syslog(args, log, size, n):
    """Interleaved rounds, each sending the same file once per contender to the same receiver:
    the TLS ceiling (bench/tls_ceiling.rs) and the agent with each structured_data choice."""
    wd = os.path.join(args.workdir, "syslog")
    pki = os.path.join(args.workdir, "pki")
    subprocess.run([args.receiver, "pki", pki], check=True)
    stats = os.path.join(args.workdir, "receiver.stats")
    if os.path.exists(stats):
        os.remove(stats)
    port = free_port()
    recv = subprocess.Popen([args.receiver, "serve", pki, f"127.0.0.1:{port}", stats])
    time.sleep(0.5)

    def received():
        try:
            with open(stats) as f:
                b, m, _ = f.read().split()
                return int(b), int(m)
        except (OSError, ValueError):
            return 0, 0

    def ceiling():
        b0 = received()[0]
        t0 = time.monotonic()
        p = subprocess.Popen([args.ceiling, log, f"127.0.0.1:{port}", f"{pki}/ca.pem", f"{pki}/client.pem",
                              f"{pki}/client.key"], stdout=subprocess.PIPE, text=True)
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        elapsed = time.monotonic() - t0
        if status != 0:
            sys.exit("tls_ceiling failed")
        handshake, send = (float(x) for x in out.split())
        # The receiver's stats file is rewritten every 5 ms: wait for the last bytes to show.
        while received()[0] - b0 < size:
            time.sleep(0.002)
        wire = received()[0] - b0
        return dict(elapsed=elapsed, steady=send, cpu=ru.ru_utime + ru.ru_stime, rss=ru.ru_maxrss / 1024,
                    wire=wire)

    def agent(sd):
        # "baseline": another build (--baseline), e.g. the one before structured_data, as it was.
        choice = "" if sd == "baseline" else f'structured_data = "{sd}"\n'
        cfg = agent_dir(wd, log, f'type = "syslog"\naddress = "127.0.0.1:{port}"\ntls = true\n'
                                 f'ca = "{pki}/ca.pem"\ncert = "{pki}/client.pem"\nkey = "{pki}/client.key"\n'
                                 f'{choice}', args.max_wait)
        b0, m0 = received()
        first = []  # when the receiver first counted a message (the connection and its TLS verdict done)

        def done():
            m = received()[1] - m0
            if m > 0 and not first:
                first.append(time.monotonic())
            return m >= n

        t0 = time.monotonic()
        elapsed, cpu, rss = run_agent(args.baseline if sd == "baseline" else args.bin, cfg, wd, size, done,
                                      profile=os.path.join(args.workdir, f"agent-syslog-{sd}.perf")
                                      if args.profile else None)
        b, m = received()
        if m - m0 != n:
            sys.exit(f"{sd}: {m - m0} messages for {n} lines")
        return dict(elapsed=elapsed, steady=t0 + elapsed - first[0], cpu=cpu, rss=rss, wire=b - b0)

    contenders = ["ceiling"] + args.structured_data.split(",") + (["baseline"] if args.baseline else [])
    results = {c: [] for c in contenders}
    mib = size / 2**20
    print(f"syslog: {mib:.0f} MiB, {n} lines -> counting TLS receiver; batch.max_wait {args.max_wait}; "
          f"{args.rounds} rounds of {', '.join(contenders)} (order rotated each round)", flush=True)
    for r in range(args.rounds):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        print(f"round {r + 1}: load {load()}", flush=True)
        for c in order:
            res = ceiling() if c == "ceiling" else agent(c)
            res["load"] = load()
            results[c].append(res)
            print(f"  {c:8} {mib / res['elapsed']:5.0f} MiB/s of input ({mib / res['steady']:.0f} steady), "
                  f"CPU {res['cpu']:.2f} s, peak RSS {res['rss']:.1f} MiB, {res['wire'] / 1e6:.0f} MB on the wire "
                  f"(decrypted); load {res['load']}", flush=True)
    rcpu = cpu_seconds(recv.pid)
    recv.kill()
    recv.wait()

    def med(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    ceil = [mib / x["elapsed"] for x in results["ceiling"]]
    print(f"summary over {args.rounds} rounds (median, min-max); share = of the same round's ceiling; "
          f"receiver CPU {rcpu:.2f} s in all; load at the end {load()}")
    for c in contenders:
        rates = [mib / x["elapsed"] for x in results[c]]
        steady = [mib / x["steady"] for x in results[c]]
        share = [a / b for a, b in zip(rates, ceil)]
        cpu = [x["cpu"] for x in results[c]]
        rss = [x["rss"] for x in results[c]]
        wire = results[c][0]["wire"]
        print(f"  {c:8} {med(rates):4.0f} MiB/s ({min(rates):.0f}-{max(rates):.0f}), share {med(share):.2f} "
              f"({min(share):.2f}-{max(share):.2f}); steady {med(steady):.0f} MiB/s; CPU {med(cpu):.2f} s "
              f"({min(cpu):.2f}-{max(cpu):.2f}); peak RSS {med(rss):.1f} MiB; {wire / 1e6:.0f} MB on the wire "
              f"= {(wire - size) / n:.0f} bytes a line over the input")


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Receiver:
    """bench/shipping_receiver.rs on loopback with its own PKI: the far end of the TLS ceiling."""

    def __init__(self, args):
        self.pki = os.path.join(args.workdir, "pki")
        subprocess.run([args.receiver, "pki", self.pki], check=True)
        self.stats = os.path.join(args.workdir, "receiver.stats")
        if os.path.exists(self.stats):
            os.remove(self.stats)
        self.port = free_port()
        self.proc = subprocess.Popen([args.receiver, "serve", self.pki, f"127.0.0.1:{self.port}", self.stats])
        time.sleep(0.5)

    def received(self):
        try:
            with open(self.stats) as f:
                b, m, _ = f.read().split()
                return int(b), int(m)
        except (OSError, ValueError):
            return 0, 0

    def ceiling(self, args, log, size):
        """The same file read in 1 MiB buffers, encrypted and sent raw: (elapsed, cpu, rss)."""
        b0 = self.received()[0]
        t0 = time.monotonic()
        pki = self.pki
        p = subprocess.Popen([args.ceiling, log, f"127.0.0.1:{self.port}", f"{pki}/ca.pem", f"{pki}/client.pem",
                              f"{pki}/client.key"], stdout=subprocess.PIPE, text=True)
        p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        elapsed = time.monotonic() - t0
        if status != 0:
            sys.exit("tls_ceiling failed")
        while self.received()[0] - b0 < size:
            time.sleep(0.002)
        return elapsed, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def collector_run(args, build, compression, log, size, tag):
    """One agent -> collector run of `build` ("new": --target, "old": --baseline-target) with
    [sink] compression (`default`: the key left out). Returns the figures of both processes."""
    rel = os.path.join(args.target if build == "new" else args.baseline_target, "release")
    agent_bin, collector_bin = os.path.join(rel, "log-sensor"), os.path.join(rel, "log-sensor-collector")
    base = os.path.join(args.workdir, "collector")
    shutil.rmtree(base, ignore_errors=True)
    cdir = os.path.join(base, "srv")
    subprocess.run([collector_bin, "init", "--dir", cdir, "--name", "127.0.0.1"], check=True,
                   stdout=subprocess.DEVNULL)
    pw = os.path.join(base, "pw")
    with open(pw, "w") as f:
        f.write("bench password\n")
    subprocess.run([collector_bin, "user", "add", "--dir", cdir, "bench", "--password-file", pw],
                   check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    cerr = open(os.path.join(base, "collector.err"), "w")
    srv = subprocess.Popen([collector_bin, "serve", "--dir", cdir, "--listen", f"127.0.0.1:{port}"],
                           stdout=subprocess.DEVNULL, stderr=cerr)
    while not os.path.exists(os.path.join(cdir, "serve.addr")):
        time.sleep(0.05)
    wd = os.path.join(base, "agent")
    choice = "" if compression == "default" else f'compression = "{compression}"\n'
    cfg = agent_dir(wd, log, f'type = "collector"\nurl = "https://127.0.0.1:{port}"\n{choice}', args.max_wait)
    subprocess.run([agent_bin, "-c", cfg, "enroll", "--server", f"https://127.0.0.1:{port}",
                    "--user", "bench", "--password-file", pw, "--ca", os.path.join(cdir, "ca.pem")],
                   check=True, stdout=subprocess.DEVNULL)
    c0 = cpu_seconds(srv.pid)
    prof = None
    if args.profile:
        # Where the collector's time goes (perf must be allowed here).
        prof = subprocess.Popen(["perf", "stat", "-e", "instructions:u", "-x", ",", "-o", os.path.join(args.workdir, f"collector-{tag}.perf"),
                                 "-p", str(srv.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    elapsed, cpu, rss = run_agent(agent_bin, cfg, wd, size, profile=os.path.join(
        args.workdir, f"agent-{tag}.perf") if args.profile else None)
    if prof:
        prof.send_signal(signal.SIGINT)
        prof.wait(60)
    ccpu, crss = cpu_seconds(srv.pid) - c0, peak_rss_mib(srv.pid)
    srv.send_signal(signal.SIGTERM)
    srv.wait(30)
    stored = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(os.path.join(cdir, "data"))
                 for f in fs)
    with open(os.path.join(wd, "agent.err")) as f:
        encodings = sorted({m for m in ("Lz4", "Gzip") if f"encoding={m}" in f.read()})
    shutil.rmtree(base, ignore_errors=True)
    return dict(elapsed=elapsed, cpu=cpu, rss=rss, ccpu=ccpu, crss=crss, stored=stored, moved_to=encodings)


def collector(args, log, size, n):
    """Interleaved rounds of the TLS ceiling and agent -> collector, per build and compression."""
    contenders = ["ceiling"] + [f"new:{c}" for c in args.compression.split(",")]
    if args.baseline_target:
        contenders += [f"old:{c}" for c in args.baseline_compression.split(",")]
    recv = Receiver(args)
    mib = size / 2**20
    print(f"collector: {mib:.0f} MiB, {n} lines, data under {args.workdir}; batch.max_wait {args.max_wait} "
          f"{BATCH_EXTRA!r}; {args.rounds} rounds of {', '.join(contenders)} (order rotated each round)", flush=True)
    results = {c: [] for c in contenders}
    ceilings = []
    for r in range(args.rounds):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        print(f"round {r + 1}: load {load()}", flush=True)
        for c in order:
            if c == "ceiling":
                elapsed, cpu, rss = recv.ceiling(args, log, size)
                ceilings.append(mib / elapsed)
                results[c].append(dict(elapsed=elapsed, cpu=cpu, rss=rss, ccpu=0.0, crss=0.0))
                print(f"  {c:12} {mib / elapsed:5.0f} MiB/s, CPU {cpu:.2f} s, peak RSS {rss:.1f} MiB", flush=True)
                continue
            build, compression = c.split(":")
            res = collector_run(args, build, compression, log, size, f"{build}-{compression}-{r + 1}")
            results[c].append(res)
            print(f"  {c:12} {mib / res['elapsed']:5.0f} MiB/s end to end; agent CPU {res['cpu']:.2f} s, "
                  f"RSS {res['rss']:.1f} MiB; collector CPU {res['ccpu']:.2f} s, RSS {res['crss']:.1f} MiB; "
                  f"{res['stored'] / 2**20:.0f} MiB stored; encodings moved to {res['moved_to']}; load {load()}",
                  flush=True)
    rcpu = cpu_seconds(recv.proc.pid)
    recv.stop()

    def med(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    def rng(xs, fmt="{:.0f}"):
        return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"

    print(f"summary over {args.rounds} rounds: median (min-max); share = of the same round's ceiling; "
          f"receiver CPU {rcpu:.2f} s in all; load at the end {load()}")
    for c in contenders:
        rates = [mib / x["elapsed"] for x in results[c]]
        share = [a / b for a, b in zip(rates, ceilings)]
        line = f"  {c:12} {rng(rates)} MiB/s, share {rng(share, '{:.2f}')}; CPU {rng([x['cpu'] for x in results[c]], '{:.2f}')} s"
        line += f", peak RSS {rng([x['rss'] for x in results[c]], '{:.1f}')} MiB"
        if c != "ceiling":
            line += (f"; collector CPU {rng([x['ccpu'] for x in results[c]], '{:.2f}')} s, peak RSS "
                     f"{rng([x['crss'] for x in results[c]], '{:.1f}')} MiB")
        print(line, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", nargs="?", default="all", choices=["syslog", "collector", "all"])
    ap.add_argument("--target", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    ap.add_argument("--workdir", default="/var/tmp/log-sensor-shipbench")
    ap.add_argument("--lines", type=int, default=2_000_000)
    # The last, partial batch closes max_wait after its first record (the agent's default is 1s),
    # which is part of every figure: pass a shorter one to see the sink's own rate.
    ap.add_argument("--max-wait", default="1s")
    ap.add_argument("--batch", default="",
                    help='more [batch] keys for the agent, e.g. "max_records = 65536\\nmax_bytes = \\"16MiB\\""')
    ap.add_argument("--rounds", type=int, default=5, help="syslog: interleaved rounds")
    ap.add_argument("--structured-data", default="full,minimal,none",
                    help="syslog: the agent's [sink] structured_data choices to measure, comma-separated")
    ap.add_argument("--baseline", help="syslog: another agent binary measured in the same rounds with the "
                                       "sink's defaults (e.g. the build before a change)")
    ap.add_argument("--compression", default="none,default",
                    help="collector: the sink's compressions to measure, comma-separated (none, default, "
                         "lz4, gzip; default leaves the key out)")
    ap.add_argument("--baseline-target", help="collector: another build's target dir (e.g. the one before a "
                                               "change), its agent and collector measured in the same rounds")
    ap.add_argument("--baseline-compression", default="none,default",
                    help="collector: the compressions measured with --baseline-target")
    ap.add_argument("--profile", action="store_true",
                    help="perf record the agent (and the collector) into WORKDIR/*.perf")
    args = ap.parse_args()
    global BATCH_EXTRA
    BATCH_EXTRA = args.batch.replace("\\n", "\n")
    rel = os.path.join(args.target, "release")
    args.bin = os.path.join(rel, "log-sensor")
    args.collector = os.path.join(rel, "log-sensor-collector")
    args.receiver = os.path.join(rel, "examples", "shipping_receiver")
    args.ceiling = os.path.join(rel, "examples", "tls_ceiling")
    need = {"syslog": (args.bin, args.receiver, args.ceiling),
            "collector": (args.bin, args.collector, args.receiver, args.ceiling),
            "all": (args.bin, args.collector, args.receiver, args.ceiling)}[args.which]
    for b in need:
        if not os.path.exists(b):
            sys.exit(f"{b} missing: cargo build --release -p log-sensor -p log-sensor-collector --bins "
                     f"--example shipping_receiver --example tls_ceiling")
    os.makedirs(args.workdir, exist_ok=True)
    log = os.path.join(args.workdir, "input.log")
    print(f"generating {args.lines} lines ...", flush=True)
    generate(log, args.lines)
    size = os.path.getsize(log)
    subprocess.run(["cat", log], stdout=subprocess.DEVNULL)  # warm the page cache
    if args.which in ("syslog", "all"):
        syslog(args, log, size, args.lines)
    if args.which in ("collector", "all"):
        collector(args, log, size, args.lines)


if __name__ == "__main__":
    main()
