// Package deploy holds lanegate's deployment files: env files per
// environment (env/), the container image's settings (image/, which the
// Dockerfile ships as lanegate's default env file), a systemd unit
// (systemd/), Docker Compose stacks for one lanegate and for a fleet
// behind HAProxy (compose/), a kustomize base and fleet overlay (k8s/),
// Prometheus alerts and a Grafana dashboard (monitoring/), and the Django
// companion app (django/).
//
// It has no code. Its tests keep the files true to lanegate: every
// variable they name is one lanegate reads, the image sets none in its
// environment (where it would silently win over every env file), each
// stack's configuration loads as lanegate would load it, with no value
// set twice where one would never be used, ports and probes are the
// listeners and endpoints lanegate serves, stop timeouts outlast its
// drain, every metric the dashboard and the alerts read is one it
// exports, and systemd-analyze, promtool, haproxy and kustomize accept
// the files.
package deploy
