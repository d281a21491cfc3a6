# syntax=docker/dockerfile:1
#
# The `statehouse` binary (every role: gateway, processor, projector, admin) in a small, non-root,
# read-only-root-friendly image. Multi-stage: a Rust builder, then distroless/cc (glibc, libgcc,
# CA certificates, no shell, no package manager).
#
#   docker build -t statehouse/statehouse:0.1.0 .
#   docker run --rm statehouse/statehouse:0.1.0 --version
#
# The Helm chart (helm/statehouse) runs it with `--config /etc/statehouse/config/statehouse.toml
# <role>` as uid/gid 65532 with a read-only root filesystem; nothing in the image writes to disk.

ARG RUST_VERSION=1.95
ARG DEBIAN_SUITE=bookworm

# ------------------------------------------------------------------------------------------------
FROM docker.io/library/rust:${RUST_VERSION}-${DEBIAN_SUITE} AS builder

# rdkafka builds its bundled librdkafka from source (C toolchain, make, cmake, perl; zlib and
# OpenSSL's headers, libssl-dev, from the image). Protobuf files are compiled by `protox` (pure Rust): no protoc needed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# Cache mounts keep the registry and the target dir between builds (BuildKit); the binary is copied
# out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p statehouse-cli \
 && mkdir -p /out/bin /out/lib \
 && cp target/release/statehouse /out/bin/statehouse \
 && strip /out/bin/statehouse \
 # Shared libraries the binary needs beyond glibc/libgcc (zlib, OpenSSL's libssl/libcrypto for
 # the Kafka and Cassandra clients' TLS), from the same Debian.
 && for lib in $(ldd /out/bin/statehouse | awk '/=> \// { print $3 }'); do \
      case "$(basename "$lib")" in \
        libc.so*|libm.so*|libgcc_s.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*) ;; \
        *) cp -L "$lib" /out/lib/ ;; \
      esac; \
    done \
 && /out/bin/statehouse --version

# ------------------------------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="statehouse" \
      org.opencontainers.image.description="Stateful serverless services on Apache Kafka (gateway, processor, projector, admin)" \
      org.opencontainers.image.source="https://github.com/statehouse/statehouse" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

COPY --from=builder /out/lib/ /usr/local/lib/statehouse/
COPY --from=builder /out/bin/statehouse /usr/local/bin/statehouse
ENV LD_LIBRARY_PATH=/usr/local/lib/statehouse
# The system roots for the Kafka and Cassandra clients' OpenSSL when no CA file is configured
# (distroless has the bundle, not Debian's /usr/lib/ssl layout OpenSSL looks in by default).
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

# distroless "nonroot": uid/gid 65532, home /home/nonroot. No ./statehouse.toml in the working
# directory, so only --config / STATEHOUSE_CONFIG select a configuration file.
USER 65532:65532
WORKDIR /home/nonroot

# gateway client, gateway metrics, processor internal, processor metrics, projector metrics
EXPOSE 9000 9090 9100 9091 9092 9300

ENTRYPOINT ["/usr/local/bin/statehouse"]
CMD ["--help"]
