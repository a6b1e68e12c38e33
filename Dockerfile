# The ordinary multi-stage build, for machines that can pull images:
#   docker build -t vg:latest .
# (scripts/docker-build.sh makes the same image FROM scratch with no registry at all.)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
COPY --from=build /src/target/release/vg-nameserver /src/target/release/vg-storage \
     /src/target/release/vg-fuse /src/target/release/vgctl /bin/
