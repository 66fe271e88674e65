# syntax=docker/dockerfile:1
# Requires BuildKit (default in Docker >= 23 / `docker compose` v2) for the cache mounts.

############################
# Builder
############################
FROM rust:1-bookworm AS builder

# rdkafka is built with bundled librdkafka (./configure + make, no cmake) and the
# `libz` feature; no OpenSSL/SASL features are enabled.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential make perl pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# Dependency caching: registry, git checkouts and target/ live in BuildKit cache
# mounts, so only changed crates are rebuilt. target/ is a cache mount (not part of
# the layer), so the binaries are copied out to /out inside the same RUN.
# --locked is used only once a Cargo.lock is committed.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eux; \
    LOCKED=""; if [ -f Cargo.lock ]; then LOCKED="--locked"; fi; \
    cargo build --release $LOCKED --bin orchestrator --bin worker; \
    mkdir -p /out; \
    cp target/release/orchestrator target/release/worker /out/

############################
# Runtime
############################
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 sagaflow \
 && useradd --system --uid 10001 --gid sagaflow --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin sagaflow

COPY --from=builder /out/orchestrator /out/worker /usr/local/bin/
# Harmless if migrations are embedded at compile time; needed if read at runtime.
COPY --chown=root:root migrations /app/migrations
WORKDIR /app

ENV HTTP_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json \
    RUST_LOG=info

USER 10001:10001
EXPOSE 8080

# No ENTRYPOINT; compose sets `command` per service.
CMD ["orchestrator", "serve"]
