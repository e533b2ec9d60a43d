# Airlock — build, test and benchmark.
GO      ?= go
PREFIX  ?= /usr/local
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
COMMIT_TIME ?= $(shell git log -1 --format=%cI 2>/dev/null)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.commitTime=$(COMMIT_TIME)
IMAGE   ?= airlock-test:busybox
STATICCHECK ?= v0.8.2
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all build install test testimage bench lint clean

all: build

# airlock-stepd, the Docker executor's step server, is looked for next to
# the airlock binary and is mounted into every job container: static.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/airlock ./cmd/airlock
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o bin/airlock-stepd ./cmd/airlock-stepd

install: build
	install -D -m 0755 bin/airlock $(DESTDIR)$(PREFIX)/bin/airlock
	install -D -m 0755 bin/airlock-stepd $(DESTDIR)$(PREFIX)/bin/airlock-stepd

# The local test image: Debian's busybox-static plus static Go helpers,
# imported with `docker import` (no registry needed).
testimage:
	./testdata/mkimage.sh $(IMAGE)

# Unit and integration tests against the real Docker engine, netns and
# iptables. Tests needing Docker or root skip without them unless
# AIRLOCK_TEST_REQUIRE=docker,root (CI sets it) makes them fail instead.
test: testimage
	$(GO) test -race -count=1 -timeout 45m ./...

# Benchmarks: each prints ratios against a baseline measured in the same run.
bench: build testimage
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 ./... 
	./testdata/bench-exec.sh bin/airlock $(IMAGE)

lint:
	@out=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK) ./...

clean:
	rm -rf bin
