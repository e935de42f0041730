# mfoundry container image: one static binary on a distroless base, run as a non-root user.
#
#   docker build -t mfoundry:0.1.0 .
#   docker run -p 2575:2575 -v mfoundry-data:/var/lib/mfoundry/data mfoundry:0.1.0
#
# Multi-stage: the dependencies are built in a layer of their own (cached until Cargo.toml or
# Cargo.lock change), then the crate. Everything is downloaded at build time; the running
# container fetches nothing. Pin the base images by digest in your registry mirror for
# reproducible builds.
ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-alpine AS build
# ring (rustls' crypto provider) and mimalloc (the allocator of the musl build: musl's own
# costs about 40 % of throughput) compile C and assembly. On Alpine the Rust target is musl,
# whose default is a statically linked executable.
RUN apk add --no-cache gcc musl-dev
WORKDIR /src

# 1. Dependencies only, against stub sources (every target named in Cargo.toml must exist).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > tests/benches/rules.rs \
    && echo 'fn main() {}' > tests/benches/outbox.rs \
    && echo 'fn main() {}' > tests/benches/transform.rs \
    && cargo build --release --locked \
    && rm -rf src

# 2. The crate. `bench` embeds examples/bench/oru-r01.hl7; `touch` makes cargo rebuild over
#    the stubs' artifacts whatever the copied files' times are.
COPY src ./src
COPY examples/bench ./examples/bench
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && mkdir -p /out/data \
    && cp target/release/mfoundry /out/mfoundry

# 3. Runtime: no shell, no package manager; CA certificates for the HTTP output's TLS.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/mfoundry /usr/local/bin/mfoundry
# DATA_DIR exists and belongs to the runtime user, so `docker run` works without a volume
# (mount one there to keep the messages).
COPY --from=build --chown=65532:65532 /out/data /var/lib/mfoundry/data
WORKDIR /var/lib/mfoundry
# The admin API on every interface so probes reach it (see docs/deploy.md); logs as JSON lines.
ENV ADMIN_ADDR=:8080 \
    DATA_DIR=/var/lib/mfoundry/data \
    LOG_FORMAT=json
# MLLP, then the admin API (/livez, /readyz, /api/v1).
EXPOSE 2575 8080
# Numeric, so Kubernetes' runAsNonRoot can verify it (distroless' "nonroot" is 65532).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mfoundry"]
CMD ["serve"]
