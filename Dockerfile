# The two services' images, one target each:
#
#   docker build --target order-service   -t order-platform/order-service .
#   docker build --target payment-service -t order-platform/payment-service .
#
# With a registry, the binaries are compiled in the `build` stage. With none,
# `just images-offline` builds them on this machine and passes BINARIES=prebuilt and a
# runtime image of its own (Debian packages only), so nothing is pulled.
#
# The images are small Debian runtimes that run as a non-root user, listen on 0.0.0.0
# inside the container, take their configuration only from the environment variables
# that `order-service --help` / `payment-service --help` list, and report their health
# from GET /health/ready: ready means "send me traffic" (the database answers and the
# service is not shutting down), which is what Docker's single health status gates.
# Kafka, the consumer and the relay are reported in its body, not in the status.

# At least the highest rust-version of the locked dependencies (scripts/rust-version-check.sh).
ARG RUST_IMAGE=rust:1.89-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
# `build` (compile here) or `prebuilt` (take target/<profile>/ from the build context).
ARG BINARIES=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The registry, the git checkouts and target/ are cache mounts (BuildKit, Buildah): a
# change to the code rebuilds only the workspace's crates, not every dependency.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p order-service -p payment-service \
 && mkdir /out && cp target/release/order-service target/release/payment-service /out/

FROM scratch AS prebuilt
ARG PROFILE=release
COPY target/${PROFILE}/order-service target/${PROFILE}/payment-service /out/

FROM ${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE} AS runtime
# curl for the health check; an unprivileged user to run as.
RUN command -v curl >/dev/null \
    || (apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
        && rm -rf /var/lib/apt/lists/*) \
 && (getent passwd app >/dev/null || useradd --uid 10001 --no-create-home --no-log-init --shell /usr/sbin/nologin app)
ENV RUST_LOG=info,sqlx=warn LOG_FORMAT=json
LABEL org.order-platform.service-image=true \
      org.opencontainers.image.vendor="order-platform" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.documentation="README.md, docs/deployment.md"
USER 10001

FROM runtime AS order-service
LABEL org.opencontainers.image.title="order-service" \
      org.opencontainers.image.description="Accepts orders over HTTP and publishes order.created through a transactional outbox"
COPY --from=binaries /out/order-service /usr/local/bin/order-service
ENV ORDER_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=4s --start-period=10s --retries=6 \
    CMD curl -fsS --max-time 3 http://127.0.0.1:8080/health/ready >/dev/null || exit 1
ENTRYPOINT ["order-service"]

FROM runtime AS payment-service
LABEL org.opencontainers.image.title="payment-service" \
      org.opencontainers.image.description="Charges each order once and publishes payment.completed or payment.failed"
COPY --from=binaries /out/payment-service /usr/local/bin/payment-service
ENV PAYMENT_LISTEN=0.0.0.0:8081
EXPOSE 8081
HEALTHCHECK --interval=5s --timeout=4s --start-period=10s --retries=6 \
    CMD curl -fsS --max-time 3 http://127.0.0.1:8081/health/ready >/dev/null || exit 1
ENTRYPOINT ["payment-service"]
