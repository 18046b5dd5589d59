# Boxcar Linux: the two commands of the quick start.
#
#   make image   set up this host, then build the default image (alpha)
#   make test    set up this host, then run the whole test suite
#
# Both run ci/setup-host first: it installs what the host lacks (as root)
# and does nothing when everything is there.

CARGO ?= cargo
# Where cargo puts it: target/, or $CARGO_TARGET_DIR when that is set.
BOXCAR := $(abspath $(or $(CARGO_TARGET_DIR),target)/release/boxcar)
# Extra arguments for `boxcar build`, e.g. make image BUILD_ARGS="--version 1.0.0"
BUILD_ARGS ?=

.PHONY: setup image test unit e2e lint boxcar clean

setup:
	ci/setup-host

boxcar: setup
	$(CARGO) build --release --locked -p boxcar -p boxcar-update

image: boxcar
	$(BOXCAR) build --channel alpha $(BUILD_ARGS)

# The whole suite: lints, the fast unit tier, then the slow end-to-end tier
# (a real build and real qemu boots) against the release binary.
test: boxcar lint unit e2e

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --locked

e2e:
	BOXCAR_BIN=$(BOXCAR) $(CARGO) test --locked -p boxcar-e2e -- --test-threads=1 --nocapture

clean:
	$(CARGO) clean
	rm -rf build
