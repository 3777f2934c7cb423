#!/usr/bin/env bash
# The demo: creates an order with curl, waits until it is PAID, prints the order and its
# payment. Expects `just up` and `scripts/run-services.sh` to have run (`just demo` does).
set -Eeuo pipefail

echo
echo "\$ curl -XPOST http://127.0.0.1:8080/orders -d '{\"amount\": 222.22}'"
order=$(curl -sf --max-time 10 -XPOST http://127.0.0.1:8080/orders \
  -H 'content-type: application/json' -H "idempotency-key: demo-$(date +%s%N)" \
  -d '{"amount": 222.22}')
echo "$order"
id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$order")

printf 'waiting for the order to be paid '
for _ in $(seq 1 150); do
  order=$(curl -sf --max-time 5 "http://127.0.0.1:8080/orders/$id")
  if [[ "$order" == *'"status":"PAID"'* ]]; then
    echo
    echo
    echo "order:   $order"
    echo "payment: $(curl -sf --max-time 5 "http://127.0.0.1:8081/payments/$id")"
    echo
    echo "Stop with: just stop && just down"
    exit 0
  fi
  printf '.'
  sleep 0.2
done
echo
echo "the order was not PAID within 30 s: $order" >&2
exit 1
