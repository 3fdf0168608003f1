# Two commands: `make demo` (the main job) and `make test`.
# Each creates or reuses .venv and installs everything it needs, pinned.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.offrl-installed
APT_PACKAGES := libegl1 libgl1 libosmesa6 libgles2
DEMO_DIR ?= demo_out

# DDS stays on loopback, always. Every target that may start rclpy inherits these.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export RMW_IMPLEMENTATION := rmw_fastrtps_cpp
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export MUJOCO_GL ?= egl
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-long lint install install-ros apt-deps clean bench-deps

$(STAMP): requirements.txt requirements-ros.txt requirements-dev.txt requirements-scale.txt setup.py
	@$(MAKE) --no-print-directory apt-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-ros.txt -r requirements-dev.txt -r requirements-scale.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

# The ament layout `ros2 launch offrl_robot ...` needs (share/offrl_robot, the ament index marker,
# lib/offrl_robot/NAME), added to the venv's editable install as links into this checkout.
# Then: AMENT_PREFIX_PATH=$(abspath $(VENV)) ros2 launch offrl_robot policy.launch.py use_sim:=true
install-ros: $(STAMP)
	$(PY) -m offrl_robot.ament_layout --prefix $(VENV)

# System libraries for offscreen MuJoCo rendering; installed only when missing (needs root + apt).
apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing apt packages:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: missing apt packages:$$missing (offscreen rendering may be unavailable)"; fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check offrl_robot tests benchmarks launch setup.py

test: $(STAMP) lint
	ROS_DOMAIN_ID=$${ROS_DOMAIN_ID:-41} $(PY) -m pytest -q -n 2 --dist loadgroup tests

# Minutes-long learning checks kept out of `make test` (CI's 15-minute suite): CQL reaching the
# goal with its full-size nets (~22 min on 2 cores).
test-long: $(STAMP)
	OFFRL_LONG_TESTS=1 $(PY) -m pytest -q -s -rA tests/test_train_learns.py -k full_size

demo: $(STAMP)
	$(PY) -m offrl_robot.cli demo --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache

# Benchmark-only peers (d3rlpy) go into the same venv on demand, never into runtime deps.
bench-deps: $(STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt
