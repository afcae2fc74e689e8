#!/usr/bin/env bash
# Builds the packages log-sensor, log-sensor-collector and log-sensor-osquery-extension, as .deb
# (cargo-deb) and .rpm (cargo-generate-rpm), from one checkout. Both packagers read the package
# metadata in each crate's Cargo.toml; this script only builds once, strips, and runs them.
#
# Usage: packaging/build.sh [--binaries DIR] [--version VERSION-REVISION] [--out DIR] [--fast]
#   --binaries  already built binaries (default: cargo build --release, then target/release)
#   --version   package version with revision, e.g. 0.1.0-2 (default: the crates' version, revision 1)
#   --out       where the packages go (default: target/packages)
#   --fast      lighter compression (quicker, larger packages; what the tests use)
#   --deb-only  no .rpm
# Needs: cargo-deb 3.8.0 and cargo-generate-rpm 0.21.1 (cargo install --locked ... --version ...),
# strip (binutils).
set -euo pipefail
cd "$(dirname "$0")/.."

bins=
version=
out=target/packages
fast=
rpm=1
while [ $# -gt 0 ]; do
  case "$1" in
    --binaries) bins=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --fast) fast=1; shift ;;
    --deb-only) rpm=; shift ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ -z "$bins" ]; then
  cargo build --release --locked -p log-sensor -p log-sensor-collector -p log-sensor-extension
  bins="${CARGO_TARGET_DIR:-target}/release"
fi

# Both packagers take binaries from <target dir>/release/: stripped copies go there, so the
# build's own binaries (and their debug info) are left as they are.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/release" "$out"
for b in log-sensor log-sensor-collector log-sensor-extension; do
  [ -x "$bins/$b" ] || { echo "build.sh: $bins/$b is not built" >&2; exit 1; }
  strip -o "$stage/release/$b" "$bins/$b"
done

deb_args=(--no-build --no-strip -q)
rpm_args=()
if [ -n "$version" ]; then
  deb_args+=(--deb-version "$version")
  rpm_args+=(-s "version = \"${version%-*}\"" -s "release = \"${version##*-}\"")
fi
if [ -n "$fast" ]; then
  deb_args+=(--fast)
  rpm_args+=(--payload-compress gzip)
fi
# cargo-deb takes the crate's name, cargo-generate-rpm its folder.
for crate in log-sensor:shipper log-sensor-collector:collector log-sensor-extension:extension; do
  CARGO_TARGET_DIR="$stage" cargo deb -p "${crate%%:*}" "${deb_args[@]}" -o "$out" >/dev/null
  if [ -n "$rpm" ]; then
    cargo generate-rpm -p "${crate##*:}" --target-dir "$stage" "${rpm_args[@]}" -o "$out"
  fi
done
ls -1 "$out"/*.deb ${rpm:+"$out"/*.rpm}
