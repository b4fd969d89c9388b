# floe's image: `docker build -t floe .` (used by docker-compose.yml).
# Stage 1 builds the release binary; stage 2 is a slim runtime with the table definitions and
# aggregate SQL floe reads by default (schemas/, sql/).
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p floe-cli \
 && cp target/release/floe /usr/local/bin/floe

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /opt/floe floe
COPY --from=build /usr/local/bin/floe /usr/local/bin/floe
COPY schemas /opt/floe/schemas
COPY sql /opt/floe/sql
WORKDIR /opt/floe
USER floe
# Prometheus /metrics and /health.
EXPOSE 9464
ENTRYPOINT ["floe"]
CMD ["run"]
