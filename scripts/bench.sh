#!/usr/bin/env bash
# Runs the benchmarks (all of them, or those named), then puts the summary together in
# target/bench-summary.md from the sections each benchmark wrote to target/bench-summary/:
# the machine, the command, and each section with when it was measured.
#
#   scripts/bench.sh                  # every benchmark
#   scripts/bench.sh consumer         # one (its section replaces the last one's)
set -Eeuo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
all=(consumer order_path end_to_end relay kafka_produce)
(( $# > 0 )) || set -- "${all[@]}"
for name in "$@"; do
  if [[ ! " ${all[*]} " == *" $name "* ]]; then
    echo "bench: no benchmark named '$name' (there are: ${all[*]})" >&2
    exit 2
  fi
done

started=$SECONDS
# Everything compiled first, so no build runs beside a measurement.
cargo bench -p order-platform --no-run $(printf -- '--bench %s ' "$@")
for name in "$@"; do
  echo "=== bench $name ($(( SECONDS - started )) s so far)" >&2
  rm -f "$target/bench-summary/$name.md"
  cargo bench -p order-platform --bench "$name"
done

summary="$target/bench-summary.md"
{
  echo "# Benchmark summary"
  echo
  echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) memory, $(uname -sr)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "- command: \`just bench\` (\`just bench NAME\` for one; criterion's reports in \`$target/criterion\`)"
  echo "- Kafka (one broker) and PostgreSQL (\`fsync\` and synchronous commit on) in containers on the same machine, release build"
  for name in "${all[@]}"; do
    section="$target/bench-summary/$name.md"
    [[ -f "$section" ]] || continue
    echo
    echo "<!-- $name: measured $(date -u -r "$section" '+%Y-%m-%d %H:%M UTC') -->"
    cat "$section"
  done
} >"$summary"
echo "bench: summary in $summary ($(( SECONDS - started )) s)" >&2
