# Every routine task of the order platform. `just` alone lists them.
set shell := ["bash", "-Eeuo", "pipefail", "-c"]
# `just images-offline` writes the image variables here; variables already set win.
set dotenv-load := true
set dotenv-filename := ".op-images.env"

# Engine set-up, shared by recipes: exports DOCKER_HOST (Docker, or Podman's socket).
engine_env := 'eval "$(scripts/engine.sh)"'
# The engine, and Kafka and PostgreSQL images that can be used (built offline if no registry answers).
infra_env := 'eval "$(scripts/engine.sh)"; eval "$(scripts/ensure-images.sh infra)"'
compose := 'if docker compose version >/dev/null 2>&1; then docker compose -p order-platform "$@"; else docker-compose -p order-platform "$@"; fi'

# List the recipes
default:
    @just --list --unsorted

# The demo: infrastructure up, both services started, an order created with curl and shown PAID
[group('demo')]
demo: up run
    scripts/demo.sh

# Start order-service (:8080) and payment-service (:8081) as processes against `just up`
[group('demo')]
run:
    scripts/run-services.sh

# Stop the services `just run` started
[group('demo')]
stop:
    scripts/run-services.sh stop

# Make sure a container engine answers (starts Podman's Docker API service if needed)
[group('infrastructure')]
engine:
    @{{engine_env}}; echo "DOCKER_HOST=$DOCKER_HOST"

# Build all four images with no container registry: Kafka and PostgreSQL (Debian packages + Maven, cached), both services (this machine's release build)
[group('infrastructure')]
images-offline:
    {{engine_env}}; scripts/build-images.sh all > .op-images.env.new; mv .op-images.env.new .op-images.env; cat .op-images.env

# Start PostgreSQL (127.0.0.1:5432) and Kafka (127.0.0.1:9092) and wait until both answer (offline images are built if no registry answers)
[group('infrastructure')]
up:
    {{infra_env}}; c() { {{compose}}; }; c up -d postgres kafka; scripts/wait-ready.sh postgres kafka

# The whole platform in containers: PostgreSQL, Kafka, order-service (:8080), payment-service (:8081); waits for /health/ready
[group('infrastructure')]
stack:
    {{engine_env}}; eval "$(scripts/ensure-images.sh all)"; c() { {{compose}}; }; if [[ "$OP_IMAGES_OFFLINE" == 1 ]]; then c up -d; else c up -d --build; fi; scripts/wait-ready.sh postgres kafka order-service payment-service

# Start the 3-broker KRaft cluster (127.0.0.1:19092, 29092, 39092) and wait until it answers
[group('infrastructure')]
up-cluster:
    {{infra_env}}; c() { {{compose}}; }; c --profile cluster up -d kafka-1 kafka-2 kafka-3; scripts/wait-ready.sh kafka-1 kafka-2 kafka-3

# Stop and remove everything `up` and `up-cluster` started, data included
[group('infrastructure')]
down:
    {{engine_env}}; c() { {{compose}}; }; c --profile cluster down --volumes --remove-orphans

# Show the infrastructure's containers
[group('infrastructure')]
ps:
    {{engine_env}}; c() { {{compose}}; }; c --profile cluster ps

# Dead letters: `just redrive list order.created.DLT`, `just redrive replay … --dry-run` (see --help)
[group('operate')]
redrive *ARGS:
    @cargo run --quiet -p redrive -- {{ARGS}}

# Orders PENDING for longer than an age (default 5m), with what is known of each: `just pending-orders 10m`
[group('operate')]
pending-orders AGE="5m" *ARGS:
    @cargo run --quiet -p pending-orders -- --older-than {{AGE}} {{ARGS}}

# Parked outbox rows of a service's database: `just outbox order parked`, `just outbox payment requeue`
[group('operate')]
outbox SERVICE *ARGS:
    @case "{{SERVICE}}" in \
      order) url="${ORDER_DATABASE_URL:-postgres://orders:orders@127.0.0.1:5432/orders}" ;; \
      payment) url="${PAYMENT_DATABASE_URL:-postgres://orders:orders@127.0.0.1:5432/payments}" ;; \
      *) echo "just outbox: SERVICE is order or payment, not {{SERVICE}}" >&2; exit 2 ;; \
    esac; DATABASE_URL="$url" cargo run --quiet -p outbox --bin outbox -- {{ARGS}}

# Run the whole suite on real Kafka and PostgreSQL, then (without ARGS) the whole stack from docker-compose.yml and the Kubernetes manifests; fails if it leaves a container behind
[group('test')]
test *ARGS:
    {{infra_env}}; rc=0; cargo test --workspace {{ARGS}} || rc=$?; if [[ -z "{{ARGS}}" ]]; then scripts/stack-check.sh || rc=1; scripts/k8s-check.sh || rc=1; fi; scripts/leftovers.sh || rc=1; exit $rc

# The Kubernetes manifests (deploy/kubernetes), validated without a cluster: strict decoding against the API types, probes, limits, grace periods
[group('test')]
k8s-check:
    scripts/k8s-check.sh

# Licenses, sources, duplicate versions and security advisories of every dependency (cargo deny, deny.toml)
[group('test')]
supply-chain:
    scripts/supply-chain.sh

# The whole stack from docker-compose.yml, services included: healthy, serving, paying an order
[group('test')]
stack-check:
    {{engine_env}}; scripts/stack-check.sh

# Remove containers and networks left by test runs that were killed
[group('test')]
clean:
    {{engine_env}}; scripts/leftovers.sh --remove

# Failure drills on the whole platform as OS processes (`just chaos --list`; `just chaos broker-kill --seed 7`)
# Release builds; CHAOS_PROFILE=dev uses the debug build `just test` left behind (quicker to build).
[group('test')]
chaos *ARGS:
    {{infra_env}}; profile="${CHAOS_PROFILE:-release}"; dir="$profile"; [ "$profile" = dev ] && dir=debug; rc=0; cargo build --profile "$profile" --quiet -p order-service -p payment-service -p chaos && "target/$dir/chaos" {{ARGS}} || rc=$?; scripts/leftovers.sh || rc=1; exit $rc

# POST→PAID latency at fixed rates (orders/s) against `just up`: `just latency 50 1000` (OP_PROFILE=dev for the debug build)
[group('test')]
latency *RATES:
    {{infra_env}}; scripts/latency.sh {{RATES}}

# The benchmarks (consumer, order_path, end_to_end, relay, kafka_produce), then target/bench-summary.md; `just bench consumer` runs one
[group('test')]
bench *NAMES:
    {{infra_env}}; rc=0; scripts/bench.sh {{NAMES}} || rc=$?; scripts/leftovers.sh || rc=1; exit $rc
