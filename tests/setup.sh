#!/usr/bin/env bash
# Installs what the end-to-end tests need and is safe to run again:
#   - Debian packages: rsyslog with its GnuTLS driver (the syslog sink is proven against it),
#     chromium (the monitor's page is rendered in a real headless browser), and logrotate
#     (rotation is tested with the real thing, compress and delaycompress included);
#   - a Python venv at .venv with osquery's published bindings (the stand-in extension manager)
#     and prometheus-client (its parser checks the monitor's /metrics).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=()
command -v rsyslogd >/dev/null 2>&1 || apt_pkgs+=(rsyslog)
ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || apt_pkgs+=(rsyslog-gnutls)
command -v certtool >/dev/null 2>&1 || apt_pkgs+=(gnutls-bin)
command -v chromium >/dev/null 2>&1 || apt_pkgs+=(chromium)
[ -x /usr/sbin/logrotate ] || command -v logrotate >/dev/null 2>&1 || apt_pkgs+=(logrotate)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${apt_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import osquery, thrift, prometheus_client' 2>/dev/null; then
  echo "setup: creating .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
fi
echo "setup: ready"
