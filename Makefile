# lanegate — the two commands a newcomer needs are `make run` and `make test`.

GO      ?= go
ENV     ?= deploy/env/development.env
PKGS    := ./...
BENCHTIME ?= 1s

.PHONY: run test vet build config bench bench-overhead bench-storm fuzz clean

## run: start lanegate on :8080 in front of a Django app on 127.0.0.1:8000
run:
	$(GO) run ./cmd/lanegate --env-file $(ENV)

## test: vet, then every test with the race detector
test: vet
	$(GO) test -race -count=1 $(PKGS)

vet:
	$(GO) vet $(PKGS)

## build: a static binary in ./bin
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o bin/lanegate ./cmd/lanegate

## config: print the effective configuration for ENV
config:
	$(GO) run ./cmd/lanegate --env-file $(ENV) config

## bench: Go micro-benchmarks of the hot path (compare runs with benchstat)
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime=$(BENCHTIME) -count=6 ./admission ./proxy

## bench-overhead: lanegate vs direct vs HAProxy over a trivial upstream, with wrk
bench-overhead:
	bench/overhead/run

## bench-storm: the login storm on a real Django + PgBouncer stack, direct vs HAProxy vs lanegate (ARGS="--users 50 lanegate")
bench-storm:
	bench/storm/run $(ARGS)

## fuzz: a short fuzzing pass over path classification
fuzz:
	$(GO) test -run '^$$' -fuzz=FuzzClassify -fuzztime=30s ./proxy

clean:
	rm -rf bin bench/out
