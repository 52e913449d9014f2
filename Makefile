# lanegate — the two commands a newcomer needs are `make run` and `make test`.

GO      ?= go
ENV     ?= deploy/env/development.env
PKGS    := ./...
BENCHTIME ?= 1s

.PHONY: run test test-go test-django vet build config demo bench bench-overhead bench-storm bench-storm-chaos chaos fuzz soak clean

## run: start lanegate on :8080 in front of a Django app on 127.0.0.1:8000
run:
	$(GO) run ./cmd/lanegate --env-file $(ENV)

## test: vet, every Go test with the race detector, and the Django companion app's tests
test: test-go test-django

test-go: vet
	$(GO) test -race -count=1 $(PKGS)

## test-django: deploy/django's tests, with Debian's Django 3.2 and allauth (skipped if absent, unless TEST_REQUIRE_DJANGO=1)
PYTHON ?= /usr/bin/python3
test-django:
	@if $(PYTHON) -c 'import django, allauth' 2>/dev/null; then \
		$(PYTHON) deploy/django/runtests.py; \
	elif [ "$$TEST_REQUIRE_DJANGO" = 1 ]; then \
		echo "test-django: $(PYTHON) lacks Django or allauth (TEST_REQUIRE_DJANGO=1)" >&2; exit 1; \
	else \
		echo "test-django: SKIPPED: install Debian's python3-django and python3-django-allauth to run deploy/django's tests"; \
	fi

vet:
	$(GO) vet $(PKGS)

## build: a static binary in ./bin
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o bin/lanegate ./cmd/lanegate

## config: print the effective configuration for ENV
config:
	$(GO) run ./cmd/lanegate --env-file $(ENV) config

## demo: about 4 minutes, as root on Debian: a short login storm straight at Django and through lanegate, the side-by-side table, then lanegate's live page for DEMO_HOLD (60) seconds
demo:
	bench/demo/run

## bench: Go micro-benchmarks of the hot path (compare runs with benchstat)
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime=$(BENCHTIME) -count=6 ./admission ./proxy ./session

## bench-overhead: lanegate vs direct vs HAProxy over a trivial upstream, with wrk
bench-overhead:
	bench/overhead/run

## bench-storm: the login storm on a real Django + PgBouncer stack, direct vs HAProxy vs lanegate (ARGS="--users 50 lanegate")
bench-storm:
	bench/storm/run $(ARGS)

## fuzz: every fuzz target for FUZZTIME each (path classification, cookie and header parsing, token verification, store values, configuration)
FUZZTIME ?= 30s
FUZZ_TARGETS := ./proxy:FuzzClassify ./session:FuzzVerify ./session:FuzzCookieHeaders ./session:FuzzDecodeEntry ./config:FuzzLoad
# Go 1.26's fuzzing coordinator can fail a run with a bare "context deadline
# exceeded" as FUZZTIME ends, writing no input (golang/go#75804, fixed in Go
# 1.27): that is reported, not counted as a finding. A failing input is.
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz: $$name in $$pkg for $(FUZZTIME)"; \
		out=$$($(GO) test -run '^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) $$pkg 2>&1); rc=$$?; \
		echo "$$out" | tail -n 4; \
		if [ $$rc -ne 0 ]; then \
			if echo "$$out" | grep -qx '    context deadline exceeded' && ! echo "$$out" | grep -q 'Failing input written'; then \
				echo "fuzz: $$name: the coordinator's own deadline (golang/go#75804), no failing input: not a finding"; \
			else echo "$$out" >&2; exit 1; fi; \
		fi; \
	done

## chaos: the fault suite: upstream, client, Redis and shutdown faults in Go (also part of make test), then PgBouncer and PostgreSQL restarted and frozen under load on the storm stack
chaos:
	$(GO) test -race -count=1 -run 'Fault|Pending|Revocation|StoreFailure' ./cmd/lanegate ./proxy ./session
	bench/storm/chaos $(ARGS)

## bench-storm-chaos: only the storm-stack part of chaos (about 3 minutes)
bench-storm-chaos:
	bench/storm/chaos $(ARGS)

## soak: lanegate at 6x its budget for SOAK_DURATION, with cancellations and slow clients: every request accounted for, back to idle, no leaks
SOAK_DURATION ?= 10m
soak:
	@mkdir -p bench/out
	$(GO) run ./bench/soak -duration $(SOAK_DURATION) -out bench/out/soak.md

clean:
	rm -rf bin bench/out
