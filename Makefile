# writ — build, test and tooling. `make help` lists the targets.
SHELL := /bin/bash
GO    ?= go
TOOLS := $(CURDIR)/.tools

GOLANGCI_LINT_VERSION := v2.15.0
GOVULNCHECK_VERSION   := v1.9.0
# govulncheck's database, built from a pinned golang.org/x/vulndb module (the
# module proxy is reachable where vuln.go.dev may not be). With network access,
# GOVULNDB=https://vuln.go.dev uses the live one.
VULNDB_VERSION        := v0.0.0-20261105234957-e22db6528018
GOVULNDB              ?= file://$(TOOLS)/vulndb

VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: help build man test test-spire spire test-systemd systemd-rootfs caddy step-ca bench bench-load fuzz lint vulncheck deps postgres demo generate generate-check tidy-check clean release release-check image-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## build bin/writ, bin/writ-exec (the small exec shim: no cgo, so no dynamic loader) and bin/mcpdemo (make demo's MCP server and client)
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/writ ./cmd/writ
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/writ-exec ./cmd/writ-exec
	$(GO) build -o bin/mcpdemo ./deploy/mcpdemo

man: ## write the writ(1) man page to docs/man/writ.1 (shell completions: writ completion bash|zsh|fish)
	@mkdir -p docs/man
	$(GO) run ./cmd/writ man > docs/man/writ.1

test: deps caddy step-ca postgres ## install swtpm if missing, start PostgreSQL, then go vet and every test with the race detector
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

BENCHTIME ?= 1s
BENCHPKGS ?= ./...
# -p 1: one package's benchmarks at a time, so that they do not compete for
# the CPUs with another package's (go test runs packages in parallel).
bench: deps ## run the benchmarks, print the table of performance goals (bench/goals.yaml) beside this run's figures and baselines, and write bench/results.md
	@set -o pipefail; $(GO) test -p 1 -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) $(BENCHPKGS) | tee bench.out
	$(GO) run ./internal/benchtable -goals bench/goals.yaml -out bench/results.md bench.out $(wildcard bench/load.out)

LOAD_DURATION ?= 60s
bench-load: ## writ bench load at 1k and 10k simulated nodes (5 s interval) against a broker of its own on this machine; figures to bench/load.out, which make bench's table then reads (docs/adr/0051)
	rm -f bench/load.out
	GO=$(GO) bench/load.sh 1000 $(LOAD_DURATION)
	GO=$(GO) bench/load.sh 10000 $(LOAD_DURATION)

FUZZTIME ?= 20s
# Minimizing a new input may take 60s by default, the whole run of a target
# with large seeds (real event logs): keep it short so the time goes to fuzzing.
FUZZMINIMIZETIME ?= 1s
fuzz: ## run each fuzz test for FUZZTIME (default 20s)
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$pkg; \
	  done; done

$(TOOLS)/golangci-lint:
	GOBIN=$(TOOLS) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

$(TOOLS)/govulncheck:
	GOBIN=$(TOOLS) $(GO) install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)

lint: $(TOOLS)/golangci-lint tidy-check vulncheck ## golangci-lint (pinned), go mod tidy check and govulncheck
	$(TOOLS)/golangci-lint run ./...

$(TOOLS)/vulndb/index/db.json:
	$(GO) mod download golang.org/x/vulndb@$(VULNDB_VERSION)
	$(GO) run golang.org/x/vulndb/cmd/indexdb@$(VULNDB_VERSION) \
	  -vulns "$$($(GO) env GOMODCACHE)/golang.org/x/vulndb@$(VULNDB_VERSION)/data/osv" -out $(TOOLS)/vulndb

vulncheck: $(TOOLS)/govulncheck $(TOOLS)/vulndb/index/db.json ## govulncheck against GOVULNDB (default: the pinned local database)
	$(TOOLS)/govulncheck -db $(GOVULNDB) ./...

tidy-check: ## fail if go mod tidy would change go.mod or go.sum
	$(GO) mod tidy -diff

# Debian packages the tests and code generation need.
DEB_PACKAGES := swtpm swtpm-tools protobuf-compiler chromium
# Caddy for the HTTP gateway's end-to-end test, built from test/caddy (its own
# go.mod) into the user's cache, outside the repository, once per machine.
CADDY_BIN ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/writ/caddy-v2.11.9
caddy: ## build Caddy v2.11.9 for the tests into $(CADDY_BIN) when missing
	@if [ -x "$(CADDY_BIN)" ]; then echo "caddy: $(CADDY_BIN)"; else \
	  mkdir -p "$$(dirname "$(CADDY_BIN)")" && cd test/caddy && \
	  GOWORK=off $(GO) build -o "$(CADDY_BIN).tmp" github.com/caddyserver/caddy/v2/cmd/caddy && mv "$(CADDY_BIN).tmp" "$(CADDY_BIN)"; fi

# step-ca v0.30.2 for the upstream-CA end-to-end test, built from test/stepca
# (its own go.mod, with go.step.sm/crypto v0.77.1) into the user's cache,
# once per machine. Without cgo: piv-go (YubiKey support) wants libpcsclite.
STEP_CA_BIN ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/writ/step-ca-v0.30.2
step-ca: ## build step-ca v0.30.2 for the upstream-CA test into $(STEP_CA_BIN) when missing
	@if [ -x "$(STEP_CA_BIN)" ]; then echo "step-ca: $(STEP_CA_BIN)"; else \
	  mkdir -p "$$(dirname "$(STEP_CA_BIN)")" && cd test/stepca && \
	  GOWORK=off CGO_ENABLED=0 $(GO) build -o "$(STEP_CA_BIN).tmp" github.com/smallstep/certificates/cmd/step-ca && mv "$(STEP_CA_BIN).tmp" "$(STEP_CA_BIN)"; fi

# SPIRE v1.13.3's server and agent for the SPIRE tests, built from
# test/spiretools (its own go.mod, so SPIRE's dependency graph stays out of
# writ's) into the user's cache, once per machine.
SPIRE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/writ/spire-v1.13.3
spire: ## build spire-server and spire-agent v1.13.3 for the SPIRE tests into $(SPIRE_DIR) when missing
	@if [ -x "$(SPIRE_DIR)/spire-server" ] && [ -x "$(SPIRE_DIR)/spire-agent" ]; then echo "spire: $(SPIRE_DIR)"; else \
	  mkdir -p "$(SPIRE_DIR)" && cd test/spiretools && \
	  for b in spire-server spire-agent; do \
	    GOWORK=off $(GO) build -o "$(SPIRE_DIR)/$$b.tmp" github.com/spiffe/spire/cmd/$$b && mv "$(SPIRE_DIR)/$$b.tmp" "$(SPIRE_DIR)/$$b" || exit 1; \
	  done; fi

test-spire: deps spire ## the tests against real SPIRE (test/spire, build tag spire): the writ NodeAttestor plugin, federation, side by side
	$(GO) build -o bin/writ-spire-plugin ./cmd/writ-spire-plugin
	WRIT_SPIRE_DIR="$(SPIRE_DIR)" WRIT_SPIRE_PLUGIN="$(CURDIR)/bin/writ-spire-plugin" $(GO) test -race -count=1 -tags spire ./test/spire/

# make test-systemd boots this minimal Debian with systemd-nspawn --boot
# (docs/adr/0057); debootstrapped once, then only ever the lower layer of a
# throwaway overlay. A new name (the -N) when what goes into it changes.
SYSTEMD_SUITE ?= bookworm
SYSTEMD_ROOTFS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/writ/systemd-rootfs-$(SYSTEMD_SUITE)-1
DEBIAN_MIRROR ?= http://deb.debian.org/debian
systemd-rootfs: ## debootstrap Debian bookworm, systemd 252 (SYSTEMD_SUITE=trixie: 257; minbase, systemd, procps) for make test-systemd into $(SYSTEMD_ROOTFS) when missing; as root, installing debootstrap and systemd-container with apt-get when missing
	@if [ -x "$(SYSTEMD_ROOTFS)/usr/lib/systemd/systemd" ]; then echo "systemd-rootfs: $(SYSTEMD_ROOTFS)"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "systemd-rootfs: debootstrap and systemd-nspawn need root"; exit 1; fi; \
	command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap systemd-container; } || exit 1; \
	rm -rf "$(SYSTEMD_ROOTFS).tmp" && mkdir -p "$$(dirname "$(SYSTEMD_ROOTFS)")" && \
	debootstrap --variant=minbase --include=systemd,dbus,procps $(SYSTEMD_SUITE) "$(SYSTEMD_ROOTFS).tmp" "$(DEBIAN_MIRROR)" >"$(SYSTEMD_ROOTFS).log" 2>&1 || \
	  { tail -20 "$(SYSTEMD_ROOTFS).log"; exit 1; }; \
	mv "$(SYSTEMD_ROOTFS).tmp" "$(SYSTEMD_ROOTFS)" && echo "systemd-rootfs: $(SYSTEMD_ROOTFS)"

test-systemd: deps systemd-rootfs ## deploy/systemd's units under a live systemd (test/systemd, build tag systemd; root): broker and agent start, serve, reload, stop
	WRIT_REQUIRE_SYSTEMD=1 WRIT_SYSTEMD_ROOTFS="$(SYSTEMD_ROOTFS)" $(GO) test -race -count=1 -tags systemd ./test/systemd/

deps: ## install swtpm, swtpm-tools, protoc, chromium (writ report's HTML test) and systemd (systemd-analyze verifies the units) with apt-get when missing
	@missing=""; \
	command -v swtpm >/dev/null && command -v swtpm_setup >/dev/null && command -v swtpm_localca >/dev/null || missing="swtpm swtpm-tools"; \
	command -v protoc >/dev/null || missing="$$missing protobuf-compiler"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	if [ -z "$$missing" ]; then echo "deps: swtpm, protoc, chromium and systemd-analyze are installed"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "deps: missing:$$missing. Install them as root with:"; \
	  echo "  apt-get update && apt-get install -y$$missing"; exit 1; fi; \
	echo "deps: installing$$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing

postgres: ## start PostgreSQL for the store tests (apt-get install as root when missing); without it they skip unless WRIT_REQUIRE_POSTGRES=1
	.ci/postgres

demo: deps build ## the whole chain on loopback: TPM, broker, agent, governed and refused commands, audit
	deploy/demo.sh

PROTOS := $(shell find api -name '*.proto')
generate: ## regenerate the protobuf and gRPC code (needs protoc: make deps)
	protoc -I api \
	  --plugin=protoc-gen-go="$$($(GO) tool -n protoc-gen-go)" \
	  --plugin=protoc-gen-go-grpc="$$($(GO) tool -n protoc-gen-go-grpc)" \
	  --go_out=. --go_opt=module=github.com/writ-dev/writ \
	  --go-grpc_out=. --go-grpc_opt=module=github.com/writ-dev/writ \
	  $(PROTOS)

generate-check: generate ## fail if the generated code is not current
	@git diff --exit-code -- api || { echo "generated code is stale: run make generate and commit"; exit 1; }

# Release tarballs (deploy/release.sh): static linux binaries for each of
# RELEASE_ARCHES, reproducible, with SHA256SUMS.
DIST           ?= dist
RELEASE_ARCHES ?= amd64 arm64
release: ## build $(DIST)/writ_<version>_linux_{amd64,arm64}.tar.gz (writ, writ-exec, writ-spire-plugin; -trimpath, static) and $(DIST)/SHA256SUMS
	GO=$(GO) deploy/release.sh $(VERSION) $(DIST) $(RELEASE_ARCHES)

# The second build links anew but reuses the build cache's compiled
# packages; RELEASE_CHECK_COLD=1 gives it an empty cache (slow: everything
# is compiled again), so that compilation itself is shown reproducible.
release-check: ## build the release twice: fail unless the two are byte-identical and SHA256SUMS verifies (RELEASE_CHECK_COLD=1: second build from an empty cache)
	rm -rf $(DIST)/check-a $(DIST)/check-b
	GO=$(GO) deploy/release.sh $(VERSION) $(DIST)/check-a $(RELEASE_ARCHES) >/dev/null
	cold=$$(mktemp -d); trap 'chmod -R u+w "$$cold"; rm -rf "$$cold"' EXIT; \
	if [ "$(RELEASE_CHECK_COLD)" = 1 ]; then export GOCACHE="$$cold"; fi; \
	GO=$(GO) deploy/release.sh $(VERSION) $(DIST)/check-b $(RELEASE_ARCHES) >/dev/null
	diff -r $(DIST)/check-a $(DIST)/check-b
	cd $(DIST)/check-a && sha256sum --strict -c SHA256SUMS
	@for f in $(DIST)/check-a/*.tar.gz; do tar -tzf $$f | sort | tr '\n' ' ' | sed "s|^|$$(basename $$f): |"; echo; done
	@set -e; for arch in $(RELEASE_ARCHES); do \
	  d=$$(mktemp -d); tar -xzf $(DIST)/check-a/writ_*_linux_$$arch.tar.gz -C $$d; \
	  for b in $$d/*/writ $$d/*/writ-exec $$d/*/writ-spire-plugin; do \
	    m=$$(readelf -h $$b | sed -n 's/^ *Machine: *//p'); \
	    case "$$arch:$$m" in amd64:*X86-64*|arm64:*AArch64*) ;; *) echo "release-check: $$b is $$m, not $$arch"; exit 1;; esac; \
	    if readelf -l $$b | grep -q INTERP; then echo "release-check: $$b is not static"; exit 1; fi; \
	  done; rm -rf $$d; done
	@echo "release-check: two builds of $(VERSION) are byte-identical; checksums verify"
	rm -rf $(DIST)/check-a $(DIST)/check-b

image-check: ## run deploy/Dockerfile's go build line here (no Docker needed): the broker binary must build, be static and run
	@line=$$(sed -n 's/^RUN \(CGO_ENABLED=0 go build .*\)$$/\1/p' deploy/Dockerfile); \
	test -n "$$line" || { echo "image-check: no 'RUN CGO_ENABLED=0 go build' line in deploy/Dockerfile"; exit 1; }; \
	want=$$(sed -n 's/^go //p' go.mod); got=$$(sed -n 's/^ARG GO_VERSION=//p' deploy/Dockerfile); \
	test "$$want" = "$$got" || { echo "image-check: deploy/Dockerfile builds with Go $$got, go.mod says $$want"; exit 1; }; \
	out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	echo "image-check: $$line"; \
	VERSION=image-check sh -c "$${line//\/out\//$$out/}" && \
	if readelf -l "$$out/writ" | grep -q INTERP; then echo "image-check: the binary is dynamically linked: distroless static has no libc"; exit 1; fi && \
	"$$out/writ" version | grep -q '^writ image-check ' && echo "image-check: static broker binary builds and runs ($$("$$out/writ" version))"

clean: ## remove build outputs and installed tools
	rm -rf bin dist $(TOOLS)
