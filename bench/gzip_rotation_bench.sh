#!/usr/bin/env bash
# The agent's CPU while logrotate (compress + delaycompress) compresses a big rotated file that
# the agent already read: the archive must be waited for while gzip writes it, not decompressed
# from its start at every write. Usage: MB=120 [BIN=target/debug/log-sensor] bench/gzip_rotation_bench.sh
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/log-sensor}
MB=${MB:-40}
D=$(mktemp -d)
mkdir -p $D/logs
cat > $D/agent.toml <<T
host_id = "b"
state_dir = "state"
[sources.app]
paths = ["logs/app.log", "logs/app.log.*.gz"]
[sink]
type = "file"
path = "state/out.ndjson"
sync = false
T
cat > $D/lr.conf <<T
$D/logs/app.log {
  rotate 10
  create
  compress
  delaycompress
}
T
python3 - "$D/logs/app.log" "$MB" <<'P'
import sys, random
n=int(sys.argv[2])<<20
r=random.Random(7)
out=[]; size=0
while size<n:
    l=("2026-12-01T00:%02d:%02d.%03d INFO req=%016x user=u%05d path=/api/v1/%s ms=%d\n"%(r.randrange(60),r.randrange(60),r.randrange(1000),r.getrandbits(64),r.randrange(99999),r.choice(["orders","users","items","cart"]),r.randrange(5000))).encode()
    out.append(l); size+=len(l)
open(sys.argv[1],"wb").write(b"".join(out))
P
LINES=$(wc -l < $D/logs/app.log)
LOG_SENSOR_LOG=info $BIN -c $D/agent.toml run 2>$D/agent.err &
PID=$!
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
until [ -f $D/state/out.ndjson ] && [ "$(wc -l < $D/state/out.ndjson)" -ge "$LINES" ]; do sleep 0.5; done
logrotate -f -s $D/lr.state $D/lr.conf    # app.log -> app.log.1 (plain, delaycompress)
sleep 7                                   # rotate_wait 5s: app.log.1 drained and let go
C0=$(cpu); T0=$(date +%s.%N)
logrotate -f -s $D/lr.state $D/lr.conf    # gzip app.log.1 -> app.log.1.gz, then shift
until grep -q 'app.log.[12].gz.*state="done"' $D/agent.err; do sleep 0.1; done
T1=$(date +%s.%N); C1=$(cpu)
echo "MB=$MB lines=$LINES gz=$(stat -c %s $D/logs/app.log.2.gz) agent CPU from the compressing rotation to done: $(( C1 - C0 )) ticks of 1/$(getconf CLK_TCK) s; wall $(echo "$T1 - $T0" | bc) s; archive opened $(grep -c 'following.*app.log.[12].gz' $D/agent.err)x"
kill $PID; wait $PID 2>/dev/null || true
rm -rf $D
