# bedtime: the two commands that are the contract are `make demo` and `make test`.
# Everything else (bench, model, evaluate) builds on the same venv.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
EXTRAS ?= test,fleet

.PHONY: all venv ha-venv demo test test-python test-native test-deep interop bench model evaluate demo-deps test-deps \
        system-deps install-pi clean system-test pi-test system-test-deps

all: test

# ---- set-up -------------------------------------------------------------------------------------
$(STAMP): pyproject.toml setup.py native/ring.c native/ring.h native/filter.c native/filter.h native/build_native.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e '.[$(EXTRAS)]'
	touch $@

venv: $(STAMP)

# Debian packages, installed only when missing and only when we are root (CI is); otherwise the exact
# apt-get line is printed. The demo needs only the broker; the tests also need chromium (browser tests) and
# PostgreSQL (fleet console), which are large and pull system upgrades, so `make demo` never installs them.
DEMO_DEBS := mosquitto
TEST_DEBS := mosquitto chromium postgresql

# $(call debs,PACKAGES): install those of PACKAGES that are missing (--no-install-recommends: only what they need)
define debs
@missing=""; \
for pkg in $(1); do case $$pkg in \
  mosquitto)  command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || missing="$$missing mosquitto";; \
  chromium)   command -v chromium >/dev/null 2>&1 || missing="$$missing chromium";; \
  postgresql) command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql";; \
esac; done; \
if [ -n "$$missing" ]; then \
  if [ "$$(id -u)" = 0 ]; then \
    echo "installing Debian packages:$$missing"; \
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
  else \
    echo "note: missing Debian packages:$$missing (run: sudo apt-get install --no-install-recommends$$missing); what needs them will skip or fail"; \
  fi; \
fi
endef

demo-deps:
	$(call debs,$(DEMO_DEBS))

test-deps:
	$(call debs,$(TEST_DEBS))

system-deps: test-deps

# ---- the contract -------------------------------------------------------------------------------
# The night goes to ./demo-output (git-ignored), replaced by the next run; nothing is left in /tmp.
demo: demo-deps venv
	$(PY) -m appliance.demo

test: test-deps venv test-native test-python

test-python: venv
	$(PY) -m pytest -q -p no:cacheprovider

# The generated (hypothesis) tests with DEEP times their examples: a shake-out before CI's random draw finds a
# rare failing input (not part of `make test`; about half an hour at DEEP=10).
DEEP ?= 10
test-deep: test-deps venv
	DEEP=$(DEEP) $(PY) -m pytest -q -p no:cacheprovider -p tests.deep_examples \
	  $$(grep -l "@given" tests/test_*.py)

# The C ring buffer and decoder under AddressSanitizer + UndefinedBehaviorSanitizer.
test-native:
	$(MAKE) -C native test

# ---- interoperability -------------------------------------------------------------------------
# A real Home Assistant Core in its own venv (it pins its own paho-mqtt and ~150 packages), cached in
# build/ (ignored): rebuilt only when its requirement or constraint file changes. 2024.3.x is the last
# line that runs on Python 3.11.
HA_VENV  ?= build/ha-venv
HA_STAMP := $(HA_VENV)/.installed
HA_REQS  := tests/interop/ha-requirements.txt
HA_CONS  := tests/interop/ha-constraints.txt

$(HA_STAMP): $(HA_REQS) $(HA_CONS)
	test -x $(HA_VENV)/bin/python || $(PYTHON) -m venv $(HA_VENV)
	$(HA_VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(HA_VENV)/bin/python -m pip install -q -r $(HA_REQS) -c $(HA_CONS)
	touch $@

ha-venv: $(HA_STAMP)

# The box against that Home Assistant over the test mosquitto (tests/interop, not part of `make test`).
interop: demo-deps venv ha-venv
	BEDTIME_HA_VENV=$(HA_VENV) $(PY) -m pytest -q -p no:cacheprovider tests/interop

# ---- the box where it lives: install-pi.sh and bedtime.service under a real systemd ----------------------
# Root only. A Debian 12 root filesystem (debootstrap, cached in build/rootfs/ARCH) booted with systemd-nspawn;
# install-pi.sh runs inside as on a Pi. system-test: amd64; pi-test: arm64 under qemu-user-static (Cortex-A72).
# Not part of `make test` (tests/conftest.py leaves tests/system out unless BEDTIME_SYSTEM_TESTS is set).
system-test-deps:
	@missing=""; \
	for t in debootstrap:debootstrap systemd-nspawn:systemd-container qemu-aarch64-static:qemu-user-static \
	         update-binfmts:binfmt-support; do \
	  command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "missing Debian packages:$$missing (sudo apt-get install$$missing)"; exit 1; fi; \
	fi

system-test: demo-deps system-test-deps venv
	BEDTIME_SYSTEM_TESTS=1 $(PY) -m pytest -q -p no:cacheprovider -s tests/system/test_systemd_box.py

pi-test: demo-deps system-test-deps venv
	BEDTIME_SYSTEM_TESTS=1 $(PY) -m pytest -q -p no:cacheprovider -s tests/system/test_pi_arm64.py

# ---- measurement and models ---------------------------------------------------------------------
bench: test-deps venv
	$(PIP) install -q -e '.[$(EXTRAS),bench]'
	$(PY) -m bench --write docs/benchmarks.md

model: venv
	$(PIP) install -q -e '.[$(EXTRAS),train]'
	$(PY) -m models.stager.train
	$(PY) -m models.loops.train

evaluate: venv
	$(PIP) install -q -e '.[$(EXTRAS),bench]'
	$(PY) -m models.stager.evaluate

install-pi:
	sudo systemd/install-pi.sh

clean:
	rm -rf $(VENV) build *.egg-info appliance/_native*.so appliance/_native.c demo-output
	$(MAKE) -C native clean
