#!/usr/bin/env bash
# The demo: creates an order with curl and waits until it is PAID, then one above the
# simulated gateway's decline limit and waits until it is PAYMENT_FAILED; prints each order
# and its payment. Expects `just up` and `scripts/run-services.sh` (`just demo` does both).
set -Eeuo pipefail

# $1 = amount, $2 = the status to wait for
order_until() {
  echo
  echo "\$ curl -XPOST http://127.0.0.1:8080/orders -d '{\"amount\": $1}'"
  local order id
  order=$(curl -sf --max-time 10 -XPOST http://127.0.0.1:8080/orders \
    -H 'content-type: application/json' -H "idempotency-key: demo-$(date +%s%N)" \
    -d "{\"amount\": $1}")
  echo "$order"
  id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$order")
  printf 'waiting for the order to be %s ' "$2"
  for _ in $(seq 1 150); do
    order=$(curl -sf --max-time 5 "http://127.0.0.1:8080/orders/$id")
    if [[ "$order" == *"\"status\":\"$2\""* ]]; then
      echo
      echo "order:   $order"
      echo "payment: $(curl -sf --max-time 5 "http://127.0.0.1:8081/payments/$id")"
      return 0
    fi
    printf '.'
    sleep 0.2
  done
  echo
  echo "the order was not $2 within 30 s: $order" >&2
  return 1
}

order_until 222.22 PAID
# The simulated gateway declines above PAYMENT_SIMULATED_DECLINE_ABOVE (10000.00 here).
order_until 25000.00 PAYMENT_FAILED
echo
echo "Dead letters, if any: just redrive list order.created.DLT"
echo "Stop with: just stop && just down"
