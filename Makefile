# The verbs a person types. `make test` is what CI runs (.ci/run).
CARGO ?= cargo
TEST_PROFILE ?= ci-test
# make demo options: IO=xdp|xdp-generic|packet, FAMILY=4|6, SNAT=0|1,
# IMPAIR=SPEC (e.g. loss=1%) IMPAIR_SIDE=server|client|both (docs/lab.md).
IO ?= xdp
FAMILY ?= 4
SNAT ?= 0
IMPAIR ?=
IMPAIR_SIDE ?= server
# Property-test cases per suite; CI runs at least 10,000.
PROPTEST_CASES ?= 10000
# Commands the lab tests run, each with the Debian package that provides it.
LAB_DEPS = ip:iproute2 ethtool:ethtool nginx:nginx curl:curl openssl:openssl ping:iputils-ping h2load:nghttp2-client python3:python3 hping3:hping3 sslscan:sslscan testssl:testssl.sh systemd-analyze:systemd

.PHONY: install all build test test-deps unit fuzz fuzz-slice bench-crypto bench-decrypt bench-handshake bench-dataplane bench-idle bench-cpu bench-loss demo demo-decrypt clean lab-up lab-down bench-bridge

all: build

build:
	$(CARGO) build --workspace --release

# Installs the binaries, the systemd unit and the operators' docs (docs/operations.md):
# make install [PREFIX=/usr/local] [DESTDIR=]. The configuration stays the operator's:
# /etc/cutls/cutls.toml is never overwritten.
PREFIX ?= /usr/local
install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/systemd/system $(DESTDIR)$(PREFIX)/share/doc/cutls $(DESTDIR)/etc/cutls
	install -m 0755 target/release/cutls target/release/cutlsctl $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|@BINDIR@|$(PREFIX)/bin|g' -e 's|@DOCDIR@|$(PREFIX)/share/doc/cutls|g' tools/systemd/cutls.service \
	  > $(DESTDIR)/etc/systemd/system/cutls.service
	install -m 0644 docs/*.md $(DESTDIR)$(PREFIX)/share/doc/cutls/
	@echo "installed; write /etc/cutls/cutls.toml (docs/operations.md), then: systemctl daemon-reload && systemctl enable --now cutls"

# Installs what the tests need, then runs all of them.
test: test-deps unit fuzz-slice

test-deps:
	@command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain" >&2; exit 1; }
	@missing=""; for dep in $(LAB_DEPS); do \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v $${dep%%:*} >/dev/null 2>&1 || missing="$$missing $${dep#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "test-deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

unit:
	PROPTEST_CASES=$(PROPTEST_CASES) $(CARGO) test --workspace --profile $(TEST_PROFILE)

# The session engine fuzzed with mutated golden replays, and random forgeries into concurrent
# exchanges, longer than the slices `make test` runs (dataplane/tests/engine_memory.rs:
# mutated_golden_replays_never_panic_leak_or_linger, random_forgeries_never_change_what_the_peers_receive).
FUZZ_ITERATIONS ?= 200000
FORGERY_RUNS ?= 2000
fuzz:
	CUTLS_FUZZ_ITERATIONS=$(FUZZ_ITERATIONS) $(CARGO) test -p cutls-dataplane --profile $(TEST_PROFILE) --test engine_memory mutated_golden -- --nocapture
	CUTLS_FORGERY_RUNS=$(FORGERY_RUNS) $(CARGO) test -p cutls-dataplane --profile $(TEST_PROFILE) --test engine_memory random_forgeries -- --nocapture
	$(MAKE) fuzz-slice FUZZ_SECONDS=$(FUZZ_LONG_SECONDS)

# The cargo-fuzz targets (fuzz/README.md), FUZZ_SECONDS each: a slice of 30 s in `make test`.
# Installs cargo-fuzz if it is missing. Stable Rust takes cargo-fuzz's nightly flags with
# RUSTC_BOOTSTRAP=1; leak detection is off (the deterministic TLS provider leaks on purpose).
FUZZ_TARGETS = parse_frame pcap_reader record_opener tcp_endpoint engine_golden
FUZZ_SECONDS ?= 30
FUZZ_LONG_SECONDS ?= 600
fuzz-slice:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz build -O
	@cd fuzz && for target in $(FUZZ_TARGETS); do \
	  echo "fuzz-slice: $$target for $(FUZZ_SECONDS) s"; \
	  log=$$(mktemp); \
	  if ! ASAN_OPTIONS=detect_leaks=0 RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O $$target -- -max_total_time=$(FUZZ_SECONDS) >$$log 2>&1; then \
	    tail -60 $$log; echo "fuzz-slice: $$target failed (the input is in fuzz/artifacts/$$target)" >&2; rm -f $$log; exit 1; \
	  fi; \
	  grep -E 'DONE|^Done' $$log; rm -f $$log; \
	done

# The lab (tools/lab, docs/lab.md): client, box and server network namespaces. Needs root.
lab-up:
	tools/lab up
	@tools/lab env

lab-down:
	tools/lab down

# Forwarding rate and TCP throughput of each cutls backend against a Linux bridge, in the lab.
bench-bridge: test-deps
	$(CARGO) bench -p cutls-tests --bench bridge

# Download throughput at 0, 0.1, 1 and 5% loss on each side, through cutls and through nginx
# and HAProxy terminating TLS on the same path, in the lab (docs/bench-loss.md). Needs root.
bench-loss: test-deps
	@command -v haproxy >/dev/null || PATH="$$PATH:/usr/sbin" command -v haproxy >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy; }
	$(CARGO) build --release -p cutls-tools -p cutls-impair
	$(CARGO) bench -p cutls-tests --bench loss

# The main job: the lab demo (namespaces, nginx backends, cutls terminating TLS, curl and
# openssl through it, the counters). Needs root.
demo: test-deps
	$(CARGO) build --release -p cutls-tools -p cutls-impair
	SNAT=$(SNAT) FAMILY=$(FAMILY) IO=$(IO) IMPAIR="$(IMPAIR)" IMPAIR_SIDE=$(IMPAIR_SIDE) tools/demo

# Decrypt a real capture (../shared/captures) and show it.
DEMO_CAPTURE ?= ../shared/captures/zeek/tls-1.2-stream-keylog.pcap
DEMO_KEYLOG ?= ../shared/captures/zeek/tls-1.2-stream-keylog.keys
demo-decrypt:
	$(CARGO) build --release -p cutls-tools
	rm -rf target/demo-decrypt
	target/release/cutls decrypt --keylog $(DEMO_KEYLOG) $(DEMO_CAPTURE) --out target/demo-decrypt
	@for f in target/demo-decrypt/*; do echo "== $$f ($$(wc -c < $$f) bytes, sha256 $$(sha256sum < $$f | cut -c1-16)...)"; head -c 300 $$f | tr -c '[:print:]\n' '.'; echo; done

# cutls decrypt against tshark on the same captures (installs tshark if missing).
bench-decrypt:
	@command -v tshark >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark; }
	$(CARGO) bench -p cutls-tests --bench decrypt

# What one TLS handshake costs the poll loop that runs it.
bench-handshake:
	$(CARGO) bench -p cutls-control --bench handshake

bench-crypto:
	$(CARGO) bench -p cutls-crypto --bench crypto

# The splice per packet, in memory (no I/O): 1,000 concurrent sessions recorded, then replayed;
# against the AEAD alone on the same bytes, allocations per packet, 1 vs 2 loops.
bench-dataplane:
	$(CARGO) bench -p cutls-dataplane --bench dataplane

# What idle sessions cost the live box (CPU, memory, CPU per handshake), against nginx. Needs root.
IDLE_SESSIONS ?= 4000
LOOPS ?= 1
bench-idle: test-deps
	$(CARGO) build --release -p cutls-tools
	tools/idle-sessions $(IDLE_SESSIONS) $(LOOPS)

# CPU per GiB of a bulk TLS download and per full handshake: cutls against HAProxy and nginx
# terminating TLS on the same lab path in the same run, per process and for the whole machine
# (tools/cpu-per-work, docs/bench-dataplane.md). Needs root.
CPU_MIB ?= 512
CPU_HANDSHAKES ?= 1000
bench-cpu: test-deps
	@command -v haproxy >/dev/null || PATH="$$PATH:/usr/sbin" command -v haproxy >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy; }
	$(CARGO) build --release -p cutls-tools
	tools/cpu-per-work $(CPU_MIB) $(CPU_HANDSHAKES)

clean:
	$(CARGO) clean
