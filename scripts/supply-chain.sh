#!/usr/bin/env bash
# Supply-chain checks with cargo-deny and the committed deny.toml: licenses, duplicate
# major versions (warnings), sources, and security advisories.
#
# The advisory database is a git repository cargo-deny fetches; where it cannot be
# fetched (a machine without access to it), advisories are reported as not checked, on
# one line, and the other checks still decide. SUPPLY_CHAIN_ADVISORIES=required makes a
# missing database a failure.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "supply-chain: installing cargo-deny" >&2
  cargo install --locked cargo-deny --version 0.20.2
fi

cargo deny --log-level error check licenses bans sources
# Duplicate versions are warnings: named on one line, not refused.
duplicates=$(cargo deny check bans 2>&1 | grep -oP "duplicate entries for crate '\K[^']+" | sort -u | xargs)
echo "supply-chain: crates locked in two versions (warnings, not refused): ${duplicates:-none}"

if timeout 120 cargo deny fetch db >/dev/null 2>&1; then
  cargo deny --log-level error check --disable-fetch advisories
elif [[ ${SUPPLY_CHAIN_ADVISORIES:-} == required ]]; then
  echo "supply-chain: the advisory database could not be fetched, and SUPPLY_CHAIN_ADVISORIES=required" >&2
  exit 1
else
  echo "supply-chain: advisories NOT checked: the advisory database could not be fetched from here" >&2
fi
