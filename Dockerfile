# mfoundry container image: one static binary on a distroless base, run as a non-root user.
#
#   docker build -t mfoundry:0.1.0 .
#   docker run -p 2575:2575 -v mfoundry-data:/var/lib/mfoundry/data mfoundry:0.1.0
#
# Multi-stage: the dependencies are built in a layer of their own (cached until Cargo.toml or
# Cargo.lock change), then the crate. Everything is downloaded at build time; the running
# container fetches nothing.
#
# Both base images are named in full and pinned by digest, so a build today and a build next
# year start from the same bytes: a new Rust or a new base is a reviewed change of these two
# lines. To move to a newer one, read its digest from the registry (on a machine that can
# reach it) and replace tag and digest together:
#   docker buildx imagetools inspect docker.io/library/rust:1.95.0-alpine3.23
#   docker buildx imagetools inspect gcr.io/distroless/static-debian12:nonroot
# Behind a registry mirror, pass the mirrored names with the same digests:
#   docker build --build-arg BUILD_IMAGE=mirror.example.org/library/rust:1.95.0-alpine3.23@sha256:... .
ARG BUILD_IMAGE=docker.io/library/rust:1.95.0-alpine3.23@sha256:606fd313a0f49743ee2a7bd49a0914bab7deedb12791f3a846a34a4711db7ed2
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab

FROM ${BUILD_IMAGE} AS build
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
FROM ${RUNTIME_IMAGE}
# The release (docker build --build-arg VERSION=...; Cargo.toml's version by default) and
# the base it runs on, as OCI annotations registries and scanners read.
ARG VERSION=0.1.0
ARG RUNTIME_IMAGE
LABEL org.opencontainers.image.title="mfoundry" \
      org.opencontainers.image.description="HL7 v2 integration engine: MLLP intake with commit-before-ACK, ordered delivery, retries, dead letters" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
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
# Docker's own health check: /readyz through the binary (no shell, no curl in the image).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD ["/usr/local/bin/mfoundry", "health"]
ENTRYPOINT ["/usr/local/bin/mfoundry"]
CMD ["serve"]
