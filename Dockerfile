# The one whatsnap image; every Deployment runs it with its own `serve --target`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p whatsnap \
 && cp target/release/whatsnap /usr/local/bin/whatsnap

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data whatsnap \
 && mkdir -p /data && chown whatsnap /data
COPY --from=build /usr/local/bin/whatsnap /usr/local/bin/whatsnap
USER whatsnap
WORKDIR /data
ENV WHATSNAP_DATA_DIR=/data \
    WHATSNAP_GRPC_ADDR=0.0.0.0:50051 \
    WHATSNAP_HTTP_ADDR=0.0.0.0:8080
# Only the HTTP port is meant for the outside (`docker run -P` publishes what is exposed); the
# gRPC API on 50051 is for the other services and the operator, inside the network.
EXPOSE 8080
ENTRYPOINT ["whatsnap"]
CMD ["serve"]
