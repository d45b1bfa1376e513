# kubedev: `make demo` and `make test` are all a fresh machine needs (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(HOME)/.cargo/bin:/usr/local/go/bin:$(PATH)

CLUSTER := tests/cluster/cluster.sh
export KUBEDEV_CLUSTER_DIR ?= /var/lib/kubedev-cluster
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# The demo's sample app is the platform team's: deployed as the cluster's admin. kubedev
# itself runs as the namespace-scoped developer (examples/demo.sh).
KUBECTL_ADMIN := $(KUBEDEV_CLUSTER_DIR)/bin/kubectl --kubeconfig $(KUBEDEV_CLUSTER_DIR)/admin.kubeconfig
DEMO_NAMESPACE := kubedev-dev
# Where the local cluster's registry serves the agent image (tests/cluster/lib/config.sh).
DEMO_AGENT_IMAGE := 10.201.0.1:5000/kubedev/kubedev-agent:$(VERSION)

.PHONY: agent-image push-agent bench build dist dist-test windows-tools fuzz lint soak test test-fuzz test-soak test-unit test-component test-e2e test-teardown demo cluster-up cluster-down

build:
	cargo build --workspace

# The shell entry points; shellcheck follows what they source.
SHELL_SCRIPTS := .ci/run agent-image/build-image.sh agent-image/push-image.sh examples/demo.sh \
	packaging/dist.sh tests/cluster/cluster.sh tests/wine/run.sh

# cargo-deny's version, pinned so that a fresh machine checks what this one does.
CARGO_DENY_VERSION := 0.20.2

## Style, clippy (clippy.toml bans), docs, the tree's limits (STYLE.md: file and function
## lengths, import loops), dependencies' licenses, duplicates and sources (deny.toml), and
## the shell scripts.
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet \
		-p kubedev -p kubedev-protocol -p kubedev-process -p kubedev-cli -p tests-fake-api
	cargo run --quiet -p tests-limits
	cargo deny --version 2>/dev/null | grep -qF '$(CARGO_DENY_VERSION)' || \
		cargo install cargo-deny --version $(CARGO_DENY_VERSION) --locked --quiet
	cargo deny check licenses bans sources
	command -v shellcheck >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck >/dev/null; }
	shellcheck -x -P SCRIPTDIR $(SHELL_SCRIPTS)

## Every test: unit, component, then e2e against the local cluster, which is then
## torn down and checked for leftovers.
test: lint test-unit test-component test-fuzz test-e2e test-soak test-teardown

# Unit tests: pure logic, no processes, no cluster; the platform-neutral crates' also as
# Windows programs, under Wine.
test-unit: windows-tools
	cargo test --lib --bins
	CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=$(CURDIR)/tests/wine/run.sh \
		cargo test --target x86_64-pc-windows-gnu --lib \
		-p kubedev -p kubedev-process -p kubedev-protocol

# What building and running Windows programs here takes: the Rust target, MinGW, and Wine.
windows-tools:
	rustup target list --installed | grep -qx x86_64-pc-windows-gnu || \
		rustup target add x86_64-pc-windows-gnu
	command -v x86_64-w64-mingw32-gcc >/dev/null && [ -x /usr/lib/wine/wine64 ] || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends gcc-mingw-w64-x86-64 wine64 >/dev/null; }

# Component tests: the programs run as local processes on loopback.
test-component:
	cargo test --workspace --exclude tests-e2e --test '*'

# A short fuzzing run: every target builds, and finds nothing within seconds.
test-fuzz:
	$(MAKE) fuzz FUZZ_SECONDS=15

# End-to-end tests against the real local cluster (started if it is not up); the krew
# install test takes this machine's archives, the Windows tests run the Windows plugins
# under Wine (`make dist-test`).
test-e2e: cluster-up dist-test
	cargo build
	cargo test -p tests-e2e -- --test-threads 4

# The soak in a bounded form: a minute under load, every bound checked.
test-soak: cluster-up
	cargo build -p bench
	SOAK_SECONDS=60 target/debug/kubedev-bench soak

# `down` leaves no process, interface, netns, route, iptables chain or state behind.
test-teardown:
	$(CLUSTER) down
	$(CLUSTER) check-clean

## Measure kubedev's tunnel against kubectl port-forward and direct pod access
## (same cluster, same run); writes docs/benchmarks.md.
bench: cluster-up
	cargo build --release -p tunneld -p bench -p kubectl-intercept -p kubectl-ingest -p kubectl-replace -p tests-fixtures
	KUBEDEV_BIN_DIR=$(CURDIR)/target/release KUBEDEV_TUNNELD=$(CURDIR)/target/release/tunneld \
		target/release/kubedev-bench

cluster-up:
	$(CLUSTER) up

cluster-down:
	$(CLUSTER) down

## One session under steady load for SOAK_SECONDS (1,000 flows through the tunnel,
## intercepted requests from a pod), then the highest intercepted request rate with no
## error; fails on any failed request or a bound passed. Figures go to docs/benchmarks.md.
SOAK_SECONDS ?= 600
soak: cluster-up
	cargo build --release -p tunneld -p bench -p kubectl-intercept -p kubectl-ingest -p kubectl-replace -p tests-fixtures
	KUBEDEV_BIN_DIR=$(CURDIR)/target/release KUBEDEV_TUNNELD=$(CURDIR)/target/release/tunneld \
		SOAK_SECONDS=$(SOAK_SECONDS) KUBEDEV_SOAK_REPORT=1 target/release/kubedev-bench soak

## Fuzz what peers send (frames, the handshake, control requests, HTTP requests, SFTP
## paths) for FUZZ_SECONDS per target; crashes land in fuzz/artifacts/TARGET/. Keep each
## one in fuzz/inputs/TARGET/ once fixed: the unit tests replay those.
FUZZ_TARGETS := frame_codec handshake striped_flow control_request http_request sftp_paths
FUZZ_SECONDS ?= 300
fuzz:
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd fuzz && cargo +nightly fuzz build
	cd fuzz && for target in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$target; \
		cargo +nightly fuzz run $$target corpus/$$target inputs/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096 \
			-print_final_stats=1 2>&1 | \
			grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss|==[0-9]+==|SUMMARY|.*panicked)' ; \
	done

## The release in dist/: per plugin an archive (the plugin, tunneld, its completer, LICENSE) for each of
## TARGETS (Rust target triples; default every platform: Linux amd64 and arm64, macOS amd64
## and arm64, Windows amd64), SHA256SUMS, and the krew manifests in dist/krew/, validated
## with validate-krew-manifest. See docs/releasing.md.
dist:
	packaging/dist.sh dist

# What the tests take: this machine's release archives in dist/ (the krew test installs
# them), and the Windows and macOS archives as debug builds in target/dist-debug/, each
# binary checked to be an executable for its system and architecture; Wine, which runs the
# Windows ones in the e2e tests.
DEBUG_TARGETS := x86_64-pc-windows-gnu x86_64-apple-darwin aarch64-apple-darwin
dist-test: windows-tools
	TARGETS=x86_64-unknown-linux-gnu packaging/dist.sh dist
	TARGETS="$(DEBUG_TARGETS)" PROFILE=debug packaging/dist.sh target/dist-debug

## The agent image as an OCI archive (no Docker engine needed); TARGET=aarch64-unknown-linux-gnu
## for arm64 nodes.
AGENT_ARCHIVE := dist/kubedev-agent-$(VERSION).oci.tar
agent-image:
	mkdir -p dist
	agent-image/build-image.sh $(AGENT_ARCHIVE)

## Push the agent image: make push-agent REGISTRY=ghcr.io/my-org (credentials: skopeo login);
## SKOPEO_FLAGS passes flags to skopeo copy (e.g. --dest-cert-dir DIR).
push-agent: agent-image
	@[ -n "$(REGISTRY)" ] || { echo "usage: make push-agent REGISTRY=ghcr.io/my-org" >&2; exit 2; }
	agent-image/push-image.sh $(AGENT_ARCHIVE) $(REGISTRY) $(SKOPEO_FLAGS)
	@echo "point kubedev at it: kubectl intercept config set-agent-image $(REGISTRY)/kubedev-agent:$(VERSION)"

## Build everything, start the local cluster, deploy the sample app, and show a request
## from a pod answered by a process on the workstation through kubectl intercept.
demo: build cluster-up
	$(KUBECTL_ADMIN) -n $(DEMO_NAMESPACE) apply -f examples/echo.yaml
	$(KUBECTL_ADMIN) -n $(DEMO_NAMESPACE) rollout status deployment/echo --timeout=120s
	$(KUBECTL_ADMIN) -n $(DEMO_NAMESPACE) wait pod/client --for=condition=Ready --timeout=120s
	examples/demo.sh
	@echo "--- the cluster stays up. Use it as the namespace's developer, with this tree's plugins:"
	@echo "  export KUBECONFIG=$(KUBEDEV_CLUSTER_DIR)/dev.kubeconfig PATH=$(KUBEDEV_CLUSTER_DIR)/bin:$(CURDIR)/target/debug:\$$PATH"
	@echo "  kubectl intercept config set-agent-image $(DEMO_AGENT_IMAGE)   # the agent image in its registry"
	@echo "  kubectl intercept -n $(DEMO_NAMESPACE) echo --port 3000:http -- ./your-server"
	@echo "Stop it and remove every trace of it: make cluster-down"
