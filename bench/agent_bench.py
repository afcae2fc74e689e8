#!/usr/bin/env python3
"""Benchmarks of the log-sensor agent (release build), file -> file sink, end to end.

  throughput: a generated log of ~200-byte lines (default 1 GiB) is shipped from scratch; reports
              lines/s, MiB/s of input, CPU seconds and peak RSS of the agent.
  many-files: 1,000 files each growing by one line a second; reports the agent's steady CPU use
              (% of one core) over the measuring window, its RSS and the descriptors it holds.
  many-small: --files files of two lines each under one glob (100,000 for the issue's case), plus
              a one-file source listed first whose file gets a line a second: the time until every
              record is committed, the agent's CPU, peak RSS (and per file) and peak descriptors,
              and how long the other source's lines waited meanwhile (scans must not hold back
              reading). Then --restart: the agent is stopped, one line appended to the last
              file, and the time until the restarted agent has committed it is reported.
  symlinks:   a chain of --depth folders with two links each to the next (2^depth paths to one
              file) under a ** glob, plus the one-file source: CPU over --seconds and how long
              that source's lines waited.

Usage: cargo build --release -p log-sensor && python3 bench/agent_bench.py
       [throughput|many-files|many-small|symlinks|all] [--size-mib 1024] [--files 1000]
       [--seconds 60] [--nofile N] [--timeout S] [--restart] [--workdir /var/tmp/log-sensor-bench]

  --baseline OLD_BIN (many-files, many-small): --rounds rounds of the old build then --bin, in
              turn, so the machine's load hits both alike; many-files then prints each build's
              median and range, and the median CPU by thread (pipeline = the tail thread).

Figures are printed, never asserted: this machine is shared and noisy.
"""
import argparse, os, resource, shutil, signal, sqlite3, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def user_seconds(pid):
    """CPU-seconds in the process's own code (utime): on a VM whose memory is faulted in from
    the host on first touch, the kernel's share of writing new pages varies severalfold."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK


def thread_cpu(pid):
    """CPU-seconds per thread name (threads of one name summed): which stage is the limit."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        name = head.split("(", 1)[1]
        fields = rest.split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK
    return out


def peak_rss_mib(pid, key="VmHWM"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def line(i):
    return (f"2026-11-26T10:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z INFO [worker-{i % 8}] "
            f"request id={i:010d} method=GET path=/api/v1/items/{i % 5000} status=200 bytes={i % 9000} "
            f"latency_ms={i % 250} ua=\"Mozilla/5.0 (X11; Linux x86_64)\"\n")


def generate(path, size):
    if os.path.exists(path) and os.path.getsize(path) >= size:
        return sum(1 for _ in open(path, "rb"))
    n = 0
    with open(path, "w", buffering=1 << 20) as f:
        written = 0
        while written < size:
            block = "".join(line(n + k) for k in range(10000))
            f.write(block)
            written += len(block)
            n += 10000
    return n


def start_agent(bin_, workdir, sources, extra="", out="state/out.ndjson", sync=True, nofile=None):
    cfg = os.path.join(workdir, "agent.toml")
    with open(cfg, "w") as f:
        f.write(f'state_dir = "state"\n{sources}\n{extra}\n[sink]\ntype = "file"\npath = "{out}"\n'
                f'sync = {"true" if sync else "false"}\n')
    err = open(os.path.join(workdir, "agent.err"), "a")
    # The agent's open files limit, soft and hard (the report: 20,000).
    pre = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
    return subprocess.Popen([bin_, "-c", cfg, "run"], stderr=err, stdin=subprocess.DEVNULL,
                            preexec_fn=pre)


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def raise_own_fd_limit(n):
    """This script keeps every benchmark file open: it needs the descriptors too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(max(soft, n), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def committed(workdir):
    db = os.path.join(workdir, "state", "store.db")
    if not os.path.exists(db):
        return 0, 0
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        row = c.execute("SELECT COALESCE(SUM(committed_offset),0), COUNT(*) FROM streams").fetchone()
        c.close()
        return row
    except sqlite3.Error:
        return 0, 0


class CommittedPoll:
    """The sum of committed offsets in the agent's store, over one kept read-only connection."""

    def __init__(self, wd):
        self.db = os.path.join(wd, "state", "store.db")
        self.conn = None

    def offsets(self):
        try:
            if self.conn is None:
                if not os.path.exists(self.db):
                    return 0
                self.conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
            return self.conn.execute("SELECT COALESCE(SUM(committed_offset),0) FROM streams").fetchone()[0]
        except sqlite3.Error:
            # Not yet created by the agent (no table): look again.
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            return 0

    def close(self):
        if self.conn is not None:
            self.conn.close()


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()


def throughput(args):
    wd = os.path.join(args.workdir, "throughput")
    shutil.rmtree(os.path.join(wd, "state"), ignore_errors=True)
    os.makedirs(os.path.join(wd, "logs"), exist_ok=True)
    log = os.path.join(args.workdir, "input.log")
    size = args.size_mib << 20
    print(f"generating {args.size_mib} MiB of ~200-byte lines ...", flush=True)
    n = generate(log, size)
    real = os.path.getsize(log)
    if not os.path.exists(os.path.join(wd, "logs", "input.log")):
        os.link(log, os.path.join(wd, "logs", "input.log"))
    # Warm the page cache so the figure is the agent's, not the disk's.
    subprocess.run(["cat", log], stdout=subprocess.DEVNULL)
    t0 = time.monotonic()
    out = args.out or os.path.join(wd, "state", "out.ndjson")
    if os.path.exists(out):
        os.remove(out)
    p = start_agent(args.bin, wd, '[sources.bench]\npaths = ["logs/input.log"]', extra=args.extra.replace("\\n", "\n"), out=out, sync=not args.no_sync)
    while committed(wd)[0] < real:
        if p.poll() is not None:
            sys.exit(f"agent exited early: see {wd}/agent.err")
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    cpu, rss = cpu_seconds(p.pid), peak_rss_mib(p.pid)
    stop(p)
    out_size = os.path.getsize(out)
    print(f"throughput: {real / 2**20:.0f} MiB, {n} lines in {elapsed:.2f} s wall "
          f"(sink file {out}, sync={'off' if args.no_sync else 'on'})")
    print(f"  {n / elapsed:,.0f} lines/s, {real / 2**20 / elapsed:.0f} MiB/s of input "
          f"({out_size / 2**20 / elapsed:.0f} MiB/s of NDJSON written)")
    print(f"  agent CPU {cpu:.2f} s ({cpu / elapsed * 100:.0f}% of one core), peak RSS {rss:.1f} MiB")
    os.remove(out)


def many_files(args, bin_=None):
    """Returns (% of one core, peak RSS MiB, {thread: % of one core}) over the window."""
    bin_ = bin_ or args.bin
    raise_own_fd_limit(args.files + 256)
    wd = os.path.join(args.workdir, "many")
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(os.path.join(wd, "logs"))
    paths = [os.path.join(wd, "logs", f"f{i:04d}.log") for i in range(args.files)]
    fds = []
    for i, path in enumerate(paths):
        f = open(path, "a", buffering=1)
        f.write(line(i))
        fds.append(f)
    p = start_agent(bin_, wd, '[sources.many]\npaths = ["logs/*.log"]', nofile=args.nofile)
    t_found = time.monotonic()
    while committed(wd)[1] < args.files:
        if p.poll() is not None:
            sys.exit(f"agent exited early: see {wd}/agent.err")
        time.sleep(0.2)
    print(f"  all {args.files} files followed after {time.monotonic() - t_found:.1f} s")
    print(f"many-files: following {args.files} files; each grows by one line a second for {args.seconds} s")
    warm = 5
    c0 = None
    t_start = time.monotonic()
    i = 0
    while True:
        now = time.monotonic() - t_start
        if now >= args.seconds + warm:
            break
        if c0 is None and now >= warm:
            c0, t0, th0 = cpu_seconds(p.pid), time.monotonic(), thread_cpu(p.pid)
        # One line per file per second, spread evenly over the second.
        due = int(now * args.files)
        while i < due:
            fds[i % args.files].write(line(i))
            i += 1
        time.sleep(0.001)
    c1, t1, th1 = cpu_seconds(p.pid), time.monotonic(), thread_cpu(p.pid)
    rss, fds_now = peak_rss_mib(p.pid), fd_count(p.pid)
    time.sleep(2)
    stop(p)
    pct = (c1 - c0) / (t1 - t0) * 100
    threads = {n: (th1[n] - th0.get(n, 0.0)) / (t1 - t0) * 100 for n in th1}
    split = ", ".join(f"{n} {v:.1f}%" for n, v in sorted(threads.items(), key=lambda kv: -kv[1]) if v >= 0.05)
    print(f"  {os.path.basename(bin_)}: agent CPU {c1 - c0:.2f} s over {t1 - t0:.1f} s = {pct:.2f}% of one core, "
          f"peak RSS {rss:.1f} MiB ({rss * 1024 / args.files:.1f} KiB per file), {fds_now} descriptors, "
          f"{i} lines written; by thread: {split}; load {os.getloadavg()[0]:.1f}")
    for f in fds:
        f.close()
    return pct, rss, threads


def interleaved(args, run):
    """--rounds rounds of --baseline then --bin, so the machine's load hits both alike."""
    results = {"baseline": [], "bin": []}
    for r in range(args.rounds):
        for which, b in (("baseline", args.baseline), ("bin", args.bin)):
            print(f"round {r + 1}/{args.rounds}, {which} ({b})", flush=True)
            results[which].append(run(args, b))
    for which, b in (("baseline", args.baseline), ("bin", args.bin)):
        pcts = sorted(x[0] for x in results[which])
        rss = sorted(x[1] for x in results[which])
        names = sorted({n for x in results[which] for n in x[2]})
        med = {n: statistics.median(x[2].get(n, 0.0) for x in results[which]) for n in names}
        split = ", ".join(f"{n} {v:.1f}%" for n, v in sorted(med.items(), key=lambda kv: -kv[1]) if v >= 0.05)
        print(f"{which} {b}: median {statistics.median(pcts):.2f}% of one core "
              f"(range {pcts[0]:.2f}-{pcts[-1]:.2f}), peak RSS {rss[0]:.1f}-{rss[-1]:.1f} MiB; "
              f"median by thread: {split}")


def canary_sources(wd):
    """A one-file source listed first: its lines show whether anything holds back reading."""
    os.makedirs(os.path.join(wd, "canary"), exist_ok=True)
    return '[sources.canary]\npaths = ["canary/c.log"]\n'


class Canary:
    """Writes a line a second to canary/c.log and records how long each took to be committed."""

    def __init__(self, wd):
        self.path = os.path.join(wd, "canary", "c.log")
        self.f = open(self.path, "a", buffering=1)
        self.db = CommittedPoll(wd)
        self.pending = []  # (end offset, time written)
        self.waits = []
        self.last = 0.0

    def step(self):
        now = time.monotonic()
        if now - self.last >= 1.0:
            self.last = now
            self.f.write(line(int(now * 1000)))
            self.pending.append((self.f.tell(), now))
        if self.pending:
            try:
                c = self.db.conn or (self.db.offsets() and self.db.conn)
                got = c.execute("SELECT COALESCE(MAX(committed_offset),0) FROM streams WHERE path LIKE ?",
                                ("%/canary/c.log",)).fetchone()[0] if c else 0
            except sqlite3.Error:
                got = 0
            while self.pending and got >= self.pending[0][0]:
                self.waits.append(now - self.pending[0][1])
                self.pending.pop(0)

    def report(self):
        now = time.monotonic()
        waits = sorted(self.waits + [now - t for _, t in self.pending])
        if not waits:
            return "no canary lines"
        med = waits[len(waits) // 2]
        return (f"other source's lines waited median {med:.2f} s, max {waits[-1]:.2f} s "
                f"({len(self.waits)} committed, {len(self.pending)} still waiting)")


def total_committed(wd):
    db = os.path.join(wd, "state", "store.db")
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        row = c.execute("SELECT COALESCE(SUM(committed_offset),0), COUNT(*) FROM streams "
                        "WHERE path NOT LIKE '%/canary/%'").fetchone()
        c.close()
        return row
    except sqlite3.Error:
        return 0, 0


def many_small(args, bin_=None):
    bin_ = bin_ or args.bin
    wd = os.path.join(args.workdir, "small")
    shutil.rmtree(os.path.join(wd, "state"), ignore_errors=True)
    shutil.rmtree(os.path.join(wd, "canary"), ignore_errors=True)
    logs = os.path.join(wd, "logs")
    os.makedirs(logs, exist_ok=True)
    existing = len(os.listdir(logs))
    if existing != args.files:
        shutil.rmtree(logs)
        os.makedirs(logs)
        print(f"writing {args.files} files of two lines ...", flush=True)
        for i in range(args.files):
            with open(os.path.join(logs, f"f{i:06d}.log"), "w") as f:
                f.write(line(2 * i) + line(2 * i + 1))
    total = sum(os.path.getsize(os.path.join(logs, n)) for n in os.listdir(logs))
    sources = canary_sources(wd) + '[sources.small]\npaths = ["logs/*.log"]'
    canary = Canary(wd)
    t0 = time.monotonic()
    p = start_agent(bin_, wd, sources, nofile=args.nofile)
    peak_fds, done_at, seen = 0, None, (0, 0)
    while time.monotonic() - t0 < args.timeout:
        if p.poll() is not None:
            sys.exit(f"agent exited early: see {wd}/agent.err")
        peak_fds = max(peak_fds, fd_count(p.pid))
        canary.step()
        seen = total_committed(wd)
        if seen[0] >= total:
            done_at = time.monotonic() - t0
            break
        time.sleep(0.1)
    cpu, rss = cpu_seconds(p.pid), peak_rss_mib(p.pid)
    state = (f"all {2 * args.files} records committed in {done_at:.1f} s" if done_at is not None else
             f"after {args.timeout} s only {seen[0]} of {total} bytes committed, {seen[1]} streams")
    print(f"many-small: {args.files} files x 2 lines (limit {args.nofile or 'inherited'}): {state}")
    print(f"  agent CPU {cpu:.2f} s, peak RSS {rss:.1f} MiB ({rss * 1024 / args.files:.2f} KiB per file), "
          f"peak descriptors {peak_fds}; {canary.report()}")
    if args.restart and done_at is not None:
        stop(p)
        last = os.path.join(logs, f"f{args.files - 1:06d}.log")
        with open(last, "a") as f:
            f.write(line(10 ** 9))
        want = os.path.getsize(last)
        t1 = time.monotonic()
        p = start_agent(bin_, wd, sources, nofile=args.nofile)
        poll = CommittedPoll(wd)
        got_at = None
        while time.monotonic() - t1 < args.timeout:
            try:
                c = poll.conn or (poll.offsets() and poll.conn)
                got = c.execute("SELECT committed_offset FROM streams WHERE path = ?",
                                (last,)).fetchone() if c else None
            except sqlite3.Error:
                got = None
            if got and got[0] >= want:
                got_at = time.monotonic() - t1
                break
            time.sleep(0.05)
        cpu, rss = cpu_seconds(p.pid), peak_rss_mib(p.pid)
        state = f"the new line committed {got_at:.2f} s after start" if got_at is not None else "not committed"
        print(f"  restart over {args.files + 1} streams: {state}; CPU {cpu:.2f} s, peak RSS {rss:.1f} MiB")
    stop(p)


def symlinks(args):
    wd = os.path.join(args.workdir, "links")
    shutil.rmtree(wd, ignore_errors=True)
    for i in range(args.depth + 1):
        os.makedirs(os.path.join(wd, "tree", f"l{i}"))
    for i in range(args.depth):
        for name in ("a", "b"):
            os.symlink(os.path.join(wd, "tree", f"l{i + 1}"), os.path.join(wd, "tree", f"l{i}", name))
    with open(os.path.join(wd, "tree", f"l{args.depth}", "x.log"), "w") as f:
        f.write(line(0))
    sources = canary_sources(wd) + '[sources.links]\npaths = ["tree/l0/**/*.log"]'
    canary = Canary(wd)
    p = start_agent(args.bin, wd, sources, nofile=args.nofile)
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.seconds:
        canary.step()
        time.sleep(0.05)
    cpu, rss = cpu_seconds(p.pid), peak_rss_mib(p.pid)
    el = time.monotonic() - t0
    stop(p)
    print(f"symlinks: 2^{args.depth} paths to one file for {el:.0f} s: agent CPU {cpu:.2f} s "
          f"({cpu / el * 100:.0f}% of one core), peak RSS {rss:.1f} MiB; {canary.report()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", nargs="?", default="all",
                    choices=["throughput", "many-files", "many-small", "symlinks", "all"])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "log-sensor"))
    ap.add_argument("--workdir", default="/var/tmp/log-sensor-bench")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--nofile", type=int, help="the agent's open files limit (soft and hard)")
    ap.add_argument("--timeout", type=int, default=120, help="many-small: give up after this long")
    ap.add_argument("--restart", action="store_true", help="many-small: then time a restart")
    ap.add_argument("--depth", type=int, default=16, help="symlinks: levels of two links")
    ap.add_argument("--out", help="the file sink's path (default: in the work dir; /dev/shm/x takes the disk out)")
    ap.add_argument("--no-sync", action="store_true", help="file sink without fdatasync")
    ap.add_argument("--extra", default="", help='more config, e.g. \'[batch]\\nmax_bytes = "1MiB"\'')
    ap.add_argument("--baseline", help="many-files, many-small: another build, run in turn with --bin")
    ap.add_argument("--rounds", type=int, default=3, help="with --baseline: rounds of each")
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} missing: cargo build --release -p log-sensor")
    os.makedirs(args.workdir, exist_ok=True)
    if args.which in ("throughput", "all"):
        throughput(args)
    if args.baseline and args.which == "many-files":
        interleaved(args, many_files)
    elif args.baseline and args.which == "many-small":
        for r in range(args.rounds):
            for b in (args.baseline, args.bin):
                print(f"round {r + 1}/{args.rounds}: {b}", flush=True)
                many_small(args, b)
    elif args.which in ("many-files", "all"):
        many_files(args)
    elif args.which == "many-small":
        many_small(args)
    if args.which == "symlinks":
        symlinks(args)


if __name__ == "__main__":
    main()
