#!/usr/bin/env python3
"""Memory of the collector under a burst of enrolments (issue #10.2), printing figures (never
asserting).

A fresh collector gets N enrolments with wrong passwords at once, each from its own connection,
spread over enough loopback addresses and user names that the failure limits let every one of them
be checked: N argon2id verifications (19 MiB each) asked for together. Reports the replies by
status, the collector's RSS before, its peak (VmHWM) and its RSS a few seconds after the burst.

Usage: cargo build -p log-sensor-collector --bins   (argon2's memory does not depend on the build)
       python3 bench/enrol_burst.py [--tries 60] [--bin target/debug/log-sensor-collector]
"""
import argparse, http.client, json, os, shutil, socket, ssl, subprocess, sys, tempfile, threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tries", type=int, default=60)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/debug/log-sensor-collector"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="enrol-burst-")
    d = os.path.join(work, "c")
    try:
        subprocess.run([args.bin, "init", "--dir", d, "--name", "localhost"], check=True,
                       stdout=subprocess.DEVNULL)
        pw = os.path.join(work, "pw")
        with open(pw, "w") as f:
            f.write("right password\n")
        subprocess.run([args.bin, "user", "add", "--dir", d, "alice", "--password-file", pw],
                       check=True)
        srv = subprocess.Popen([args.bin, "serve", "--dir", d, "--listen", "127.0.0.1:0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        addr_file = os.path.join(d, "serve.addr")
        for _ in range(200):
            if os.path.exists(addr_file):
                break
            time.sleep(0.05)
        host, port = open(addr_file).read().strip().rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.pem"))
        time.sleep(0.5)
        rss_before = status_kib(srv.pid, "VmRSS")

        # Five tries per address and one per name: under the default limits every try is checked.
        conns = []
        for i in range(args.tries):
            sock = socket.create_connection((host, int(port)),
                                            source_address=(f"127.0.1.{1 + i // 5}", 0))
            c = http.client.HTTPSConnection("localhost", int(port), context=ctx)
            c.sock = ctx.wrap_socket(sock, server_hostname="localhost")
            conns.append(c)
        statuses = []
        start = threading.Barrier(args.tries)

        def enrol(i, c):
            body = json.dumps({"username": f"user-{i}", "password": "wrong", "host_id": "h",
                               "csr": "x"})
            start.wait()
            c.request("POST", "/v1/enroll", body, {"Content-Type": "application/json"})
            statuses.append(c.getresponse().status)

        threads = [threading.Thread(target=enrol, args=(i, c)) for i, c in enumerate(conns)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - t0
        time.sleep(3)
        peak = status_kib(srv.pid, "VmHWM")
        after = status_kib(srv.pid, "VmRSS")
        m = http.client.HTTPSConnection(host, int(port), context=ctx)
        m.sock = ctx.wrap_socket(socket.create_connection((host, int(port))),
                                 server_hostname="localhost")
        m.request("GET", "/metrics")
        checks = [l for l in m.getresponse().read().decode().splitlines()
                  if l.startswith("log_sensor_collector_password_checks_peak")]
        srv.terminate()
        srv.wait()
        counts = {s: statuses.count(s) for s in sorted(set(statuses))}
        print(f"{args.tries} enrolments at once in {took:.1f}s: replies {counts}")
        if checks:
            print(f"most checks at once: {checks[0].split()[-1]}")
        print(f"collector RSS before {rss_before / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, "
              f"3 s after the burst {after / 1024:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
