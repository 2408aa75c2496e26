# The verbs a person types. `make test` is what CI runs (.ci/run).
CARGO ?= cargo
TEST_PROFILE ?= ci-test
# Property-test cases per suite; CI runs at least 10,000.
PROPTEST_CASES ?= 10000

.PHONY: all build test test-deps unit bench-crypto clean

all: build

build:
	$(CARGO) build --workspace --release

# Installs what the tests need, then runs all of them.
test: test-deps unit

test-deps:
	@command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain" >&2; exit 1; }

unit:
	PROPTEST_CASES=$(PROPTEST_CASES) $(CARGO) test --workspace --profile $(TEST_PROFILE)

bench-crypto:
	$(CARGO) bench -p cutls-crypto --bench crypto

clean:
	$(CARGO) clean
