#!/usr/bin/env bash
# The Rust the project declares (`rust-version` in Cargo.toml) and the one the Dockerfile
# builds with must be at least the highest `rust-version` any locked dependency requires
# on Linux, so that a dependency bump that raises it fails here, not in a user's
# `docker compose up`.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
fail() { echo "rust-version-check: $*" >&2; exit 1; }

needed=$(cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu |
  python3 -c '
import json, sys
m = json.load(sys.stdin)
used = {n["id"] for n in m["resolve"]["nodes"]}
key = lambda v: tuple(int(x) for x in v.split("."))
found = [(key(p["rust_version"]), p["rust_version"], p["name"], p["version"])
         for p in m["packages"] if p["id"] in used and p.get("rust_version")]
_, version, name, at = max(found)
print(".".join(version.split(".")[:2]), name, at)
')
read -r needed_version needed_by needed_at <<<"$needed"

declared=$(sed -n 's/^rust-version = "\([0-9.]*\)"$/\1/p' Cargo.toml)
image=$(sed -n 's/^ARG RUST_IMAGE=rust:\([0-9.]*\)-.*$/\1/p' Dockerfile)
[[ -n "$declared" ]] || fail "no rust-version in Cargo.toml"
[[ -n "$image" ]] || fail "no ARG RUST_IMAGE=rust:X.Y-… in the Dockerfile"
at_least() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" == "$2" ]]; }
at_least "$declared" "$needed_version" ||
  fail "Cargo.toml declares rust-version $declared, but $needed_by $needed_at requires $needed_version"
at_least "$image" "$needed_version" ||
  fail "the Dockerfile builds with rust:$image, but $needed_by $needed_at requires $needed_version"
echo "rust-version-check: declared $declared, Dockerfile rust:$image; the locked dependencies need $needed_version ($needed_by $needed_at)"
