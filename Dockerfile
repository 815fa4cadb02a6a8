FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin payments-ledger

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/payments-ledger /usr/local/bin/payments-ledger
EXPOSE 8080
ENTRYPOINT ["payments-ledger"]
CMD ["serve"]
