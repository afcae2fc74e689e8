#!/usr/bin/env bash
# Installs the osquery extension where osquery's autoloader accepts it, and names it in
# osquery's extensions.load. osquery loads an autoloaded extension only when (osquery
# osquery/extensions/extensions.cpp isFileSafe, osquery/filesystem/filesystem.cpp safePermissions):
#   - its name ends in .ext;
#   - it is owned by root or by the user osqueryd runs as, and is executable;
#   - it is not writable by others, and its folder does not have the sticky bit (so not /tmp).
#
# Usage: extension/install.sh [--dir DIR] [--binary FILE] [--load-file FILE]
#   --dir        where log_sensor.ext goes (default /usr/local/lib/log-sensor)
#   --binary     an already built binary (default: cargo build --release, then target/release)
#   --load-file  osquery's autoload list to add the path to (default: only print the line)
set -euo pipefail

dir=/usr/local/lib/log-sensor
binary=
load_file=
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --load-file) load_file=$2; shift 2 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ -z "$binary" ]; then
  cd "$(dirname "$0")/.."
  cargo build --release -p log-sensor-extension
  binary="${CARGO_TARGET_DIR:-target}/release/log-sensor-extension"
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable file" >&2; exit 1; }

mkdir -p "$dir"
if [ -k "$dir" ]; then
  echo "install.sh: $dir has the sticky bit; osquery refuses extensions there (choose another --dir)" >&2
  exit 1
fi
target="$dir/log_sensor.ext"
install -m 0755 "$binary" "$target.new"
if [ "$(id -u)" = 0 ]; then
  chown root:root "$target.new"
fi
mv -f "$target.new" "$target"
chmod go-w "$dir"

if [ -n "$load_file" ]; then
  mkdir -p "$(dirname "$load_file")"
  touch "$load_file"
  grep -qxF "$target" "$load_file" || echo "$target" >> "$load_file"
  echo "install.sh: $target installed and listed in $load_file"
else
  echo "install.sh: $target installed; add this line to /etc/osquery/extensions.load:"
  echo "$target"
fi
