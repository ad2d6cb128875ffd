# sevenleague: the commands a user runs.  `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
# sslyze (the system tests' TLS scan) pins its own cryptography: a venv of its own.
SSLYZE := .cache/sslyze
# Molecule calls ansible-config from PATH; podman reads the lab's settings.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export CONTAINERS_CONF := $(CURDIR)/lab/containers.conf

# Debian packages the controller needs for the lab and the tests.
# netavark needs iptables; naming the network backend keeps apt from choosing another.
# chromium takes the system tests' picture of Prometheus's targets page.
APT_PACKAGES := podman runc netavark aardvark-dns iptables debootstrap uidmap slirp4netns \
                openssh-client iproute2 python3-venv \
                dpkg-dev lintian aptly gnupg \
                chromium fonts-dejavu-core
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: help deps apt-deps debs bench images lab-up lab-down lab-status bootstrap site lint test test-unit test-role test-system mutants clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

deps: apt-deps $(VENV)/.installed $(SSLYZE)/.installed ## install the Debian packages and the Python venvs

apt-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: requirements.txt | apt-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(SSLYZE)/.installed: requirements-sslyze.txt | apt-deps
	test -x $(SSLYZE)/bin/python || python3 -m venv $(SSLYZE)
	$(SSLYZE)/bin/python -m pip install -q -r requirements-sslyze.txt
	touch $@

debs: deps ## build the app, Envoy and OpenBao packages into build/debs (reproducible)
	$(PY) packaging/build.py

images: deps ## build the lab's base and host images (once per machine)
	$(PY) lab/lab.py images

lab-up: images ## start the lab fleet (changes nothing when it runs)
	$(PY) lab/lab.py up

lab-down: deps ## remove the lab's containers and network, nothing else
	$(PY) lab/lab.py down

lab-status: deps ## list the lab hosts and their state
	$(PY) lab/lab.py status

bootstrap: deps ## make a bare Debian host of the inventory manageable (pyinfra): make bootstrap HOST=<name>
	@test -n "$(HOST)" || { echo "usage: make bootstrap HOST=<inventory name>"; exit 2; }
	$(PY) bootstrap/bootstrap.py $(HOST)

site: lab-up ## bring up the lab and converge site.yml on it
	ansible-playbook site.yml

lint: deps ## ruff (Python lint and format check), yamllint, ansible-lint (production profile)
	$(PY) tests/run.py lint

test-unit: deps ## unit tests (tests/unit)
	$(PY) tests/run.py unit

test-role: images ## one role's Molecule scenarios: make test-role ROLE=common
	@test -n "$(ROLE)" || { echo "usage: make test-role ROLE=<role>"; exit 2; }
	$(PY) tests/run.py roles $(ROLE)

test-system: images ## a fresh lab, site.yml twice, then tests/system
	$(PY) tests/run.py system

test: images ## everything: lint, unit, every role, system; ends with "N passed, N failed"
	$(PY) tests/run.py all

mutants: deps ## mutation testing (mutmut) of the PKI, Envoy RBAC/TLS, firewall and repository-pin code; not in make test
	$(PY) tests/mutants.py

bench: images ## time the package build, a fresh lab and two converges; appends to bench/RESULTS.md
	$(PY) bench/run.py

clean: lab-down ## remove the lab and local caches (keeps the venv and images)
	rm -rf .cache
