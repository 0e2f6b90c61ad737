# syntax=docker/dockerfile:1
# The controller image used by the Helm chart (charts/jobgate).
#   docker build -t ghcr.io/jobgate/jobgate:0.1.0 \
#     --build-arg JOBGATE_VERSION=0.1.0 --build-arg JOBGATE_COMMIT="$(git rev-parse HEAD)" .
# The release workflow (.github/workflows/release.yml) builds it per
# architecture on a native runner: compiling Rust under emulation is slow.
FROM rust:1.95-bookworm AS build
# RUN sees build args as environment, so `cargo build` hands them to the
# binary's `option_env!`. Not ENV: a build without them must leave them
# unset (None) rather than empty. The build context has no .git
# (.dockerignore), so the commit has to come from outside.
ARG JOBGATE_VERSION
ARG JOBGATE_COMMIT
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin jobgate

# distroless "nonroot" runs as uid 65532, which the chart's securityContext expects.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG JOBGATE_VERSION
ARG JOBGATE_COMMIT
LABEL org.opencontainers.image.title="jobgate" \
      org.opencontainers.image.description="Kubernetes operator that caps how many Jobs run at once, across clusters, through a shared ledger object in S3" \
      org.opencontainers.image.source="https://github.com/jobgate/jobgate" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${JOBGATE_VERSION}" \
      org.opencontainers.image.revision="${JOBGATE_COMMIT}"
COPY --from=build /src/target/release/jobgate /usr/local/bin/jobgate
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/jobgate"]
