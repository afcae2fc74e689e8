#!/usr/bin/env python3
"""The collector tier on JetStream (#13), end to end with release builds, printing figures (never
asserting).

The agent (file source) ships a generated file (default 2,000,000 lines of ~210 bytes, 400 MiB, as
in bench/shipping_bench.py's collector case) through the collector sink over mutual TLS to:

  embedded   one collector, its own files and SQLite (the default store)
  embedded2  one collector, two agents (each its own host and half the lines)
  r1, r3     one collector on a three-node nats-server cluster, streams at R1 / R3
  r1x2, r3x2 two collectors on that cluster, two agents (each its own host, half the lines, one
             agent per collector, both enrolled through the first)

in interleaved rounds (the order rotated each round), each case with this build (--target) and,
with --baseline-target, another build's agent and collector (e.g. /work/base's release binaries
of main) side by side. Reports MiB/s end to end (all agents started to every offset committed,
i.e. acknowledged), CPU-seconds and peak RSS of every process (agents, collectors,
nats-servers), and the load average. `--profile CASE` records the first collector of that case
with `perf record -g` in the last round and prints where its time goes.

Usage:
  cargo build --release -p log-sensor -p log-sensor-collector --bins
  python3 bench/cluster_bench.py [--cases embedded,r1,r3,r1x2,r3x2] [--rounds 3] [--lines 2000000]
          [--baseline-target /work/base-target-dir | --baseline-bin DIR] [--workdir /var/tmp/log-sensor-clusterbench]
          [--profile r3]

nats-server is the official build the tests use (.venv/bin/nats-server, tests/setup.sh). All
processes share this machine's cores: the figures include the servers' work.
"""
import argparse, os, shutil, signal, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from agent_bench import CommittedPoll, cpu_seconds, peak_rss_mib, stop  # noqa: E402
from shipping_bench import free_port, generate, load  # noqa: E402

NATS = os.path.join(ROOT, ".venv", "bin", "nats-server")
PASSWORD = "bench password\n"


class Cluster:
    """Three nats-server nodes with JetStream on loopback, their stores under `base`."""

    def __init__(self, base):
        self.ports = [(free_port(), free_port()) for _ in range(3)]
        routes = ", ".join(f'"nats://127.0.0.1:{c}"' for _, c in self.ports)
        self.procs = []
        for i, (port, cport) in enumerate(self.ports):
            conf = os.path.join(base, f"n{i}.conf")
            with open(conf, "w") as f:
                f.write(f'server_name: n{i}\nlisten: "127.0.0.1:{port}"\n'
                        f'jetstream {{ store_dir: "{base}/n{i}" }}\n'
                        f'cluster {{ name: bench, listen: "127.0.0.1:{cport}", routes: [{routes}] }}\n')
            err = open(os.path.join(base, f"n{i}.log"), "w")
            self.procs.append(subprocess.Popen([NATS, "-c", conf], stdout=subprocess.DEVNULL, stderr=err))
        self.cpu0 = None

    def storage(self, i, replicas):
        return (f'\n[storage]\ntype = "jetstream"\nservers = ["nats://127.0.0.1:{self.ports[i][0]}"]\n'
                f'prefix = "bench"\nreplicas = {replicas}\n')

    def mark(self):
        self.cpu0 = [cpu_seconds(p.pid) for p in self.procs]

    def figures(self):
        return [(cpu_seconds(p.pid) - c0, peak_rss_mib(p.pid)) for p, c0 in zip(self.procs, self.cpu0)]

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


def until_ok(cmd, what, secs=60):
    """Runs `cmd` until it succeeds (a cluster forming, a stream being created)."""
    deadline = time.monotonic() + secs
    while True:
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode == 0:
            return
        if time.monotonic() > deadline:
            sys.exit(f"{what}: {r.stderr}")
        time.sleep(0.3)


def start_collector(bin_, cdir, base, name):
    port = free_port()
    err = open(os.path.join(base, f"{name}.err"), "w")
    p = subprocess.Popen([bin_, "serve", "--dir", cdir, "--listen", f"127.0.0.1:{port}"],
                         stdout=subprocess.DEVNULL, stderr=err)
    while not os.path.exists(os.path.join(cdir, "serve.addr")):
        if p.poll() is not None:
            sys.exit(f"collector {name} exited: see {base}/{name}.err")
        time.sleep(0.05)
    return p, port


def agent_setup(agent_bin, wd, log, host, port, ca, pw, max_wait):
    os.makedirs(os.path.join(wd, "logs"))
    os.link(log, os.path.join(wd, "logs", "input.log"))
    cfg = os.path.join(wd, "agent.toml")
    with open(cfg, "w") as f:
        f.write(f'host_id = "{host}"\nstate_dir = "state"\n[sources.bench]\npaths = ["logs/input.log"]\n'
                f'[batch]\nmax_wait = "{max_wait}"\n[sink]\ntype = "collector"\nurl = "https://127.0.0.1:{port}"\n')
    subprocess.run([agent_bin, "-c", cfg, "enroll", "--server", f"https://127.0.0.1:{port}", "--user", "bench",
                    "--password-file", pw, "--ca", ca], check=True, stdout=subprocess.DEVNULL)
    return cfg


def run_case(args, bins, case, logs, size, profile):
    """One run of `case` with `bins` = (agent, collector); returns the figures of every process."""
    agent_bin, collector_bin = bins
    base = os.path.join(args.workdir, "run")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    js = case.startswith("r")
    replicas = 3 if case.startswith("r3") else 1
    two = case.endswith("x2") or case == "embedded2"
    cluster = Cluster(base) if js else None
    pw = os.path.join(base, "pw")
    with open(pw, "w") as f:
        f.write(PASSWORD)
    cdirs = [os.path.join(base, "c1")]
    subprocess.run([collector_bin, "init", "--dir", cdirs[0], "--name", "127.0.0.1"], check=True,
                   stdout=subprocess.DEVNULL)
    conf = os.path.join(cdirs[0], "collector.toml")
    with open(conf) as f:
        text = f.read()
    if js:
        with open(conf, "w") as f:
            f.write(text + cluster.storage(0, replicas))
    until_ok([collector_bin, "user", "add", "--dir", cdirs[0], "bench", "--password-file", pw], "user add")
    if js and case.endswith("x2"):
        # README: adding a collector; it talks to another node.
        c2 = os.path.join(base, "c2")
        os.makedirs(c2, mode=0o700)
        for name in ("ca.pem", "ca.key", "server.pem", "server.key"):
            shutil.copy2(os.path.join(cdirs[0], name), os.path.join(c2, name))
        with open(os.path.join(c2, "collector.toml"), "w") as f:
            f.write(text + cluster.storage(1, replicas))
        cdirs.append(c2)
    collectors = [start_collector(collector_bin, d, base, f"collector{i + 1}") for i, d in enumerate(cdirs)]
    ca = os.path.join(cdirs[0], "ca.pem")
    agents = []
    for i, log in enumerate(logs if two else logs[:1]):
        port = collectors[min(i, len(collectors) - 1)][1]
        wd = os.path.join(base, f"agent{i + 1}")
        # Enrolled through the first collector, shipping to its own.
        cfg = agent_setup(agent_bin, wd, log, f"bench-{i + 1}", collectors[0][1], ca, pw, args.max_wait)
        with open(cfg) as f:
            t = f.read().replace(f"127.0.0.1:{collectors[0][1]}\"\n", f"127.0.0.1:{port}\"\n")
        with open(cfg, "w") as f:
            f.write(t)
        agents.append((wd, cfg, os.path.getsize(log)))
    c0 = [cpu_seconds(p.pid) for p, _ in collectors]
    if cluster:
        cluster.mark()
    perf = None
    if profile:
        perf_out = os.path.join(args.workdir, f"collector-{case}.perf")
        perf = subprocess.Popen(["perf", "record", "-g", "-o", perf_out, "-p", str(collectors[0][0].pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    t0 = time.monotonic()
    procs = []
    for wd, cfg, _ in agents:
        err = open(os.path.join(wd, "agent.err"), "w")
        procs.append(subprocess.Popen([agent_bin, "-c", cfg, "run"], cwd=wd, stderr=err, stdin=subprocess.DEVNULL))
    polls = [CommittedPoll(wd) for wd, _, _ in agents]
    left = set(range(len(agents)))
    figures = {}
    while left:
        for i in list(left):
            if polls[i].offsets() >= agents[i][2]:
                left.discard(i)
                p = procs[i]
                figures[f"agent{i + 1}"] = (cpu_seconds(p.pid), peak_rss_mib(p.pid))
            elif procs[i].poll() is not None:
                sys.exit(f"agent {i + 1} exited early: see {agents[i][0]}/agent.err")
        time.sleep(0.002)
    elapsed = time.monotonic() - t0
    for poll_ in polls:
        poll_.close()
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait(60)
    for i, (p, _) in enumerate(collectors):
        figures[f"collector{i + 1}"] = (cpu_seconds(p.pid) - c0[i], peak_rss_mib(p.pid))
    if cluster:
        for i, f in enumerate(cluster.figures()):
            figures[f"nats{i + 1}"] = f
    for p in procs:
        stop(p)
    for p, _ in collectors:
        stop(p)
    if cluster:
        cluster.stop()
    shutil.rmtree(base, ignore_errors=True)
    return elapsed, figures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    ap.add_argument("--baseline-target", help="another build's target dir, its release agent and collector "
                                               "measured in the same rounds")
    ap.add_argument("--baseline-bin", help="a directory holding another build's log-sensor and "
                                            "log-sensor-collector (e.g. /work/base)")
    ap.add_argument("--cases", default="embedded,embedded2,r1,r3,r1x2,r3x2")
    ap.add_argument("--baseline-cases", default="embedded,r3", help="the cases measured with the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--max-wait", default="1s")
    ap.add_argument("--workdir", default="/var/tmp/log-sensor-clusterbench")
    ap.add_argument("--profile", help="a case whose first collector is perf-recorded in the last round")
    ap.add_argument("--keep-input", action="store_true", help="keep the generated files afterwards")
    args = ap.parse_args()
    if not os.path.exists(NATS):
        sys.exit(f"{NATS} missing: run tests/setup.sh")
    rel = os.path.join(args.target, "release")
    builds = {"new": (os.path.join(rel, "log-sensor"), os.path.join(rel, "log-sensor-collector"))}
    base_dir = args.baseline_bin or (os.path.join(args.baseline_target, "release") if args.baseline_target else None)
    if base_dir:
        builds["base"] = (os.path.join(base_dir, "log-sensor"), os.path.join(base_dir, "log-sensor-collector"))
    for a, c in builds.values():
        for b in (a, c):
            if not os.path.exists(b):
                sys.exit(f"{b} missing: cargo build --release -p log-sensor -p log-sensor-collector --bins")
    os.makedirs(args.workdir, exist_ok=True)
    # One file for the one-agent cases; for two agents, the same lines split in two files.
    whole = os.path.join(args.workdir, "input.log")
    print(f"generating {args.lines} lines ...", flush=True)
    generate(whole, args.lines)
    halves = [os.path.join(args.workdir, f"half{i}.log") for i in (1, 2)]
    with open(whole, "rb") as f:
        data = f.read()
    cut = data.index(b"\n", len(data) // 2) + 1
    for path, part in zip(halves, (data[:cut], data[cut:])):
        if not os.path.exists(path) or os.path.getsize(path) != len(part):
            with open(path, "wb") as f:
                f.write(part)
    del data
    size = os.path.getsize(whole)
    mib = size / 2**20
    contenders = [("new", c) for c in args.cases.split(",")]
    if "base" in builds:
        contenders += [("base", c) for c in args.baseline_cases.split(",")]
    print(f"{mib:.0f} MiB, {args.lines} lines; data under {args.workdir}; batch.max_wait {args.max_wait}; "
          f"{args.rounds} rounds of {', '.join(f'{b}:{c}' for b, c in contenders)} (order rotated each round)",
          flush=True)
    results = {k: [] for k in contenders}
    for r in range(args.rounds):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        print(f"round {r + 1}: load {load()}", flush=True)
        for build, case in order:
            two = case.endswith("x2") or case == "embedded2"
            logs = halves if two else [whole]
            profile = args.profile == case and build == "new" and r == args.rounds - 1
            elapsed, figs = run_case(args, builds[build], case, logs, size, profile)
            results[(build, case)].append((elapsed, figs))
            procs = "; ".join(f"{k} {c:.2f} s {m:.0f} MiB" for k, (c, m) in figs.items())
            print(f"  {build}:{case:10} {mib / elapsed:5.0f} MiB/s; CPU, peak RSS: {procs}; load {load()}",
                  flush=True)

    def med(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    def rng(xs, fmt="{:.0f}"):
        return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"

    print(f"summary over {args.rounds} rounds: median (min-max); load at the end {load()}")
    for k in contenders:
        runs = results[k]
        rates = [mib / e for e, _ in runs]
        line = f"  {k[0]}:{k[1]:10} {rng(rates)} MiB/s"
        for proc in runs[0][1]:
            cpu = [f[proc][0] for _, f in runs]
            rss = [f[proc][1] for _, f in runs]
            line += f"; {proc} CPU {rng(cpu, '{:.1f}')} s, RSS {rng(rss)} MiB"
        print(line, flush=True)
    if args.profile:
        perf = os.path.join(args.workdir, f"collector-{args.profile}.perf")
        if os.path.exists(perf):
            print(f"where collector1's time goes in {args.profile} (perf report, self time):", flush=True)
            out = subprocess.run(["perf", "report", "-i", perf, "--no-children", "--sort", "dso,symbol",
                                  "--stdio", "--percent-limit", "1.5", "-g", "none"],
                                 capture_output=True, text=True).stdout
            print("\n".join(l for l in out.splitlines() if l.strip() and not l.startswith("#")), flush=True)
    if not args.keep_input:
        for path in [whole] + halves:
            os.remove(path)


if __name__ == "__main__":
    main()
