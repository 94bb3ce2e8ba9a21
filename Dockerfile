# Build: docker build -t membergate .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile production --locked && strip target/production/membergate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/membergate --create-home membergate
COPY --from=build /src/target/production/membergate /usr/local/bin/membergate
USER membergate
WORKDIR /var/lib/membergate
EXPOSE 8443 8080 9090
ENTRYPOINT ["membergate"]
CMD ["serve", "--config", "/etc/membergate/membergate.toml"]
