# Aetherium: `make run` sets everything up and serves on embedded defaults; `make test` runs the full suite.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: build images images-oci run test bench clean web-vendor

build:
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/aetherium ./cmd/aetherium
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/aetherium-agent ./cmd/aetherium-agent

# Guest images for microVMs: the kernel (cached by content hash; ~20 min the first time on 2 cores) and the default
# template, Debian with the agent as init and git, Node.js, npm, Bun and claude-code (reused while its inputs are
# unchanged; about a minute otherwise).
images: build
	bin/aetherium image kernel build
	bin/aetherium image build --from-debian --tools git,node,npm,bun,claude-code,curl --name default

# Container images of the gateway and the worker, FROM scratch (static binaries, CA certificates, a non-root user
# for the gateway), built with the local Docker engine and no registry: deploy/image/build.sh, docs/deploy.md.
images-oci:
	bash deploy/image/build.sh

run:
	bash scripts/setup.sh
	$(MAKE) images
	bin/aetherium serve

test:
	bash scripts/test.sh

# The dashboard's third-party files (web/static/vendor) from the npm packages pinned in web/vendor/package-lock.json.
web-vendor:
	bash web/vendor.sh

bench:
	bash scripts/bench.sh

clean:
	rm -rf bin
