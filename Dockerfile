# Build: docker build -t membergate .
# Run: mount a configuration at /etc/membergate/membergate.toml (see
# config/docker.toml and docs/deployment.md); state lives in /var/lib/membergate.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile production --locked && strip target/production/membergate

FROM debian:bookworm-slim
# A numeric user: Kubernetes' runAsNonRoot can only check a number.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/membergate --create-home membergate
COPY --from=build /src/target/production/membergate /usr/local/bin/membergate
USER 10001
WORKDIR /var/lib/membergate
VOLUME /var/lib/membergate
EXPOSE 8443 8080 9090
HEALTHCHECK --interval=30s --timeout=10s \
    CMD ["membergate", "health", "--config", "/etc/membergate/membergate.toml"]
ENTRYPOINT ["membergate"]
CMD ["serve", "--config", "/etc/membergate/membergate.toml"]
