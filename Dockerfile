# syntax=docker/dockerfile:1
# Build a static binary, then ship it alone on a distroless, non-root base.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/lanegate ./cmd/lanegate

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/lanegate /usr/local/bin/lanegate
COPY deploy/env/ /etc/lanegate/
# In a container lanegate must listen on all interfaces. The admin port is
# published too, so configuration requires LANEGATE_ADMIN_TOKEN for it:
# pass it at run time (docker run -e LANEGATE_ADMIN_TOKEN=...), never bake it in.
ENV LANEGATE_LISTEN=:8080 \
    LANEGATE_ADMIN_LISTEN=:9090 \
    LANEGATE_UPSTREAM=http://app:8000 \
    LANEGATE_LOG_FORMAT=json
EXPOSE 8080 9090
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/lanegate"]
