# The controller image used by the Helm chart (charts/jobgate).
#   docker build -t ghcr.io/jobgate/jobgate:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin jobgate

# distroless "nonroot" runs as uid 65532, which the chart's securityContext expects.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/jobgate /usr/local/bin/jobgate
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/jobgate"]
