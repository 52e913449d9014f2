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
# The container's settings (all interfaces, the admin port on 9090) are
# a file lanegate reads by default, not ENV: the environment wins over
# any env file, so ENV here would silently beat a settings file mounted
# over this one. Mount your own at the same path, or set variables with
# docker run -e. The admin port listens beyond loopback, so lanegate
# requires LANEGATE_ADMIN_TOKEN: pass it at run time, never bake it in.
COPY deploy/image/lanegate.env /etc/lanegate/lanegate.env
EXPOSE 8080 9090
USER nonroot:nonroot
# No shell or curl here: lanegate asks its own admin listener's /readyz,
# reading the same settings as the server.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/lanegate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/lanegate"]
