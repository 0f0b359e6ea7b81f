# Aetherium: `make run` sets everything up and serves on embedded defaults; `make test` runs the full suite.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: build run test bench clean

build:
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/aetherium ./cmd/aetherium
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/aetherium-agent ./cmd/aetherium-agent

run:
	bash scripts/setup.sh
	$(MAKE) build
	bin/aetherium serve

test:
	bash scripts/test.sh

bench:
	bash scripts/bench.sh

clean:
	rm -rf bin
