# Multi-stage build: a cached dependency layer, then the mfoundry binary on a minimal,
# non-root base. Nothing is downloaded at run time.
FROM rust:1-bookworm AS build
WORKDIR /src
# Build the dependencies alone first so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mfoundry /usr/local/bin/mfoundry
WORKDIR /var/lib/mfoundry
ENV LOG_FORMAT=json
EXPOSE 2575
USER nonroot
ENTRYPOINT ["/usr/local/bin/mfoundry"]
