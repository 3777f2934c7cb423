#!/usr/bin/env bash
# Starts order-service (127.0.0.1:8080) and payment-service (127.0.0.1:8081) as background
# processes against the `just up` infrastructure, and waits until both answer.
# Logs and pids: target/run/. `scripts/run-services.sh stop` stops them (SIGTERM).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
dir=target/run
mkdir -p "$dir"

stop() {
  for service in order-service payment-service; do
    pidfile="$dir/$service.pid"
    [[ -f "$pidfile" ]] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      echo "stopped $service"
    fi
    rm -f "$pidfile"
  done
}

if [[ "${1:-}" == "stop" ]]; then stop; exit 0; fi

stop
# OP_SERVICE_BINARIES: a folder of binaries already built (scripts/latency.sh passes the
# release ones); by default the debug build, made here.
bin=${OP_SERVICE_BINARIES:-}
if [[ -z "$bin" ]]; then
  echo "building the services…"
  cargo build --quiet -p order-service -p payment-service
  bin=target/debug
fi
# The demo's simulated payment gateway declines charges above 10000.00 (unless set).
export PAYMENT_SIMULATED_DECLINE_ABOVE="${PAYMENT_SIMULATED_DECLINE_ABOVE:-10000.00}"
for service in order-service payment-service; do
  nohup "$bin/$service" >"$dir/$service.log" 2>&1 &
  echo $! >"$dir/$service.pid"
done

wait_for() { # $1 = name, $2 = url
  for _ in $(seq 1 150); do
    if curl -sf --max-time 2 "$2" >/dev/null; then echo "$1 is up: $2"; return 0; fi
    if ! kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; then
      echo "$1 exited; the end of its log ($dir/$1.log):" >&2
      tail -n 20 "$dir/$1.log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "$1 did not answer within 30 s; see $dir/$1.log" >&2
  return 1
}
wait_for order-service http://127.0.0.1:8080/health/ready
wait_for payment-service http://127.0.0.1:8081/health/ready
echo "Swagger UI: http://127.0.0.1:8080/swagger-ui/ and http://127.0.0.1:8081/swagger-ui/"
