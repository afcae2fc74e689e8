#!/usr/bin/env python3
"""The syslog server input against rsyslog, on the same messages in the same run (release build).

N RFC 5424 messages of ~200 bytes (default 2,000,000), LF-framed, are generated once into a file
on /dev/shm and sent over one loopback TCP connection with sendfile (the sender costs next to
nothing and is the same for both). Each round runs, in alternating order:

  agent:    log-sensor with `[sources.net] type = "syslog"` on tcp:// -> its spool -> the file
            sink (NDJSON with `fields`), state dir and sink on /dev/shm;
  rsyslog:  Debian's rsyslogd (its own config, -n) with imtcp -> omfile writing one JSON object
            a message with the same fields (facility, severity, timestamp, hostname, app_name,
            procid, msgid, structured data, msg), also on /dev/shm.

For each: messages/s from the first byte sent until the N-th line is in the output file, and the
CPU-seconds and peak RSS of the receiving process over that span (start-up excluded). Prints
figures, never asserts. Both share the machine's cores with whatever else runs: compare medians
of interleaved rounds, and note the load average printed beside them.

Usage:
  cargo build --release -p log-sensor
  python3 bench/syslog_input_bench.py [--messages 2000000] [--rounds 3]
          [--workdir /dev/shm/log-sensor-syslogbench] [--target target] [--keep]
"""
import argparse, os, shutil, signal, socket, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from agent_bench import cpu_seconds, peak_rss_mib, stop  # noqa: E402


def message(i):
    # ~200 bytes: PRI, RFC 3339 stamp, host, app, procid, msgid, one SD element, a request line.
    return (f"<134>1 2026-12-02T10:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z "
            f"web-{i % 16:02d} nginx {1000 + i % 7} ACCESS [req@32473 id=\"{i:010d}\"] "
            f"GET /api/v1/items/{i % 5000} status=200 bytes={i % 9000} latency_ms={i % 250} "
            f"ua=\"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101\"\n")


def generate(path, n):
    if os.path.exists(path):
        with open(path, "rb") as f:
            if sum(1 for _ in f) == n:
                return os.path.getsize(path)
    with open(path, "w", buffering=1 << 20) as f:
        for start in range(0, n, 10000):
            f.write("".join(message(k) for k in range(start, min(n, start + 10000))))
    return os.path.getsize(path)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, proc, what):
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


class LineCount:
    """Newlines in a growing file, reading only what was appended since the last look."""

    def __init__(self, path):
        self.path, self.pos, self.lines, self.f = path, 0, 0, None

    def count(self):
        if self.f is None:
            if not os.path.exists(self.path):
                return 0
            self.f = open(self.path, "rb")
        while True:
            chunk = self.f.read(1 << 22)
            if not chunk:
                return self.lines
            self.lines += chunk.count(b"\n")


def send(port, data_path):
    s = socket.create_connection(("127.0.0.1", port))
    with open(data_path, "rb") as f:
        s.sendfile(f)
    return s  # kept open until the receiver is done, as a sender would


def measure(proc, out, n, port, data_path, what):
    lc = LineCount(out)
    cpu0 = cpu_seconds(proc.pid)
    t0 = time.time()
    s = send(port, data_path)
    while lc.count() < n:
        if proc.poll() is not None:
            sys.exit(f"{what} exited mid-run")
        if time.time() - t0 > 900:
            sys.exit(f"{what}: only {lc.lines} of {n} lines after 900 s")
        time.sleep(0.02)
    secs = time.time() - t0
    cpu = cpu_seconds(proc.pid) - cpu0
    rss = peak_rss_mib(proc.pid)
    s.close()
    return secs, cpu, rss


def run_agent(args, wd, n, data_path):
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    port = free_port()
    out = os.path.join(wd, "out.ndjson")
    with open(os.path.join(wd, "agent.toml"), "w") as f:
        f.write(f'host_id = "bench-host"\nstate_dir = "state"\n'
                f'[sources.net]\ntype = "syslog"\nlisten = ["tcp://127.0.0.1:{port}"]\n'
                f'[batch]\nmax_wait = "{args.max_wait}"\n'
                f'[sink]\ntype = "file"\npath = "{out}"\n')
    bin_ = os.path.join(args.target, "release", "log-sensor")
    p = subprocess.Popen([bin_, "-c", os.path.join(wd, "agent.toml"), "run"],
                         stderr=open(os.path.join(wd, "agent.err"), "w"),
                         env=dict(os.environ, LOG_SENSOR_LOG="warn"))
    try:
        wait_listening(port, p, "the agent")
        return measure(p, out, n, port, data_path, "the agent")
    finally:
        stop(p)
        if not args.keep:
            shutil.rmtree(wd, ignore_errors=True)


RSYSLOG_CONF = """global(workDirectory="{work}" maxMessageSize="64k")
module(load="imtcp")
template(name="json" type="string" string="{{\\"facility\\":\\"%syslogfacility-text%\\",\\"severity\\":\\"%syslogseverity-text%\\",\\"timestamp\\":\\"%timestamp:::date-rfc3339%\\",\\"hostname\\":\\"%hostname:::json%\\",\\"app_name\\":\\"%app-name:::json%\\",\\"procid\\":\\"%procid:::json%\\",\\"msgid\\":\\"%msgid:::json%\\",\\"structured_data\\":\\"%structured-data:::json%\\",\\"peer\\":\\"%fromhost-ip%\\",\\"msg\\":\\"%msg:::json%\\"}}\\n")
ruleset(name="bench") {{ action(type="omfile" file="{out}" template="json") }}
input(type="imtcp" port="{port}" ruleset="bench")
"""


def run_rsyslog(args, wd, n, data_path):
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(os.path.join(wd, "work"))
    port = free_port()
    out = os.path.join(wd, "out.json")
    conf = os.path.join(wd, "rsyslog.conf")
    with open(conf, "w") as f:
        f.write(RSYSLOG_CONF.format(work=os.path.join(wd, "work"), out=out, port=port))
    p = subprocess.Popen(["rsyslogd", "-n", "-f", conf, "-i", os.path.join(wd, "rsyslog.pid")],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(wd, "rsyslog.err"), "w"))
    try:
        wait_listening(port, p, "rsyslogd")
        return measure(p, out, n, port, data_path, "rsyslogd")
    finally:
        stop(p)
        if not args.keep:
            shutil.rmtree(wd, ignore_errors=True)


def load():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-wait", default="100ms")
    ap.add_argument("--workdir", default="/dev/shm/log-sensor-syslogbench")
    ap.add_argument("--target", default=os.path.join(ROOT, "target"))
    ap.add_argument("--keep", action="store_true", help="keep each run's folder (outputs are large)")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    data = os.path.join(args.workdir, "messages.txt")
    size = generate(data, args.messages)
    print(f"{args.messages} messages, {size / args.messages:.0f} bytes each on average, "
          f"{size / 2**20:.0f} MiB", flush=True)
    results = {"agent": [], "rsyslog": []}
    for r in range(args.rounds):
        order = ["agent", "rsyslog"] if r % 2 == 0 else ["rsyslog", "agent"]
        for who in order:
            run = run_agent if who == "agent" else run_rsyslog
            la = load()
            secs, cpu, rss = run(args, os.path.join(args.workdir, who), args.messages, data)
            results[who].append((args.messages / secs, cpu, rss))
            print(f"round {r + 1} {who:8s} {args.messages / secs:10,.0f} msg/s  "
                  f"{size / secs / 2**20:6.1f} MiB/s  {cpu:6.2f} CPU-s  {rss:6.1f} MiB peak RSS  "
                  f"load {la}", flush=True)
    for who, rows in results.items():
        rates = sorted(x[0] for x in rows)
        cpus = sorted(x[1] for x in rows)
        print(f"{who:8s} median {rates[len(rates) // 2]:,.0f} msg/s (range {rates[0]:,.0f}-{rates[-1]:,.0f}), "
              f"median {cpus[len(cpus) // 2]:.2f} CPU-s for {args.messages:,} messages")
    if not args.keep:
        os.remove(data)


if __name__ == "__main__":
    main()
