# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Python 3.8 (the Jetson's): pyenv's 3.8.18 wherever pyenv lives, else python3.8 on PATH.
PY38 ?= $(firstword $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.8*/bin/python3.8 \
	$(HOME)/.pyenv/versions/3.8*/bin/python3.8 /root/.pyenv/versions/3.8*/bin/python3.8) \
	$(shell command -v python3.8 2>/dev/null))
VENV38 ?= .venv38
# Core and TensorRT-layer tests that must pass on the Jetson's Python 3.8.
# Core, TensorRT layer, ZED source, the nodes' ROS-free logic (nodes_core), util, the JetPack install, and
# the default model's resolver and ONNX preparation (their onnxruntime parts skip: see below), and
# the hang guard (test/hang_guard.py: faulthandler on the robot's Python).
PY38_TESTS ?= $(wildcard test/test_core_*.py test/test_trt_*.py test/test_sources_zed.py \
	test/test_nodes_core.py test/test_util.py test/test_jetpack_install.py \
	test/test_onnx_prepare.py test/test_default_model.py test/test_hang_guard.py)

# shared/ (the ROS 2 trees built for this machine): next to the checkout, next to the repository
# this checkout was cloned from (a clone in /tmp), or /work/shared.
ORIGIN := $(shell git config --get remote.origin.url 2>/dev/null)
SHARED_DIRS := ../shared $(dir $(CURDIR))shared \
	$(if $(filter /%,$(ORIGIN)),$(dir $(patsubst %/,%,$(ORIGIN)))shared) /work/shared

# The ROS 2 launch stack (launch, launch_ros, launch_pytest, ros2cli) for machines without a ROS
# install: shared/ros2-launch-stack/install.sh (or DEPTH_ROS_LAUNCH_STACK).
LAUNCH_STACK ?= $(firstword $(DEPTH_ROS_LAUNCH_STACK) \
	$(wildcard $(addsuffix /ros2-launch-stack/install.sh,$(SHARED_DIRS))))

# The robot's stack: ROS 2 Humble built for Python 3.8 (shared/ros2-humble-py38, or
# DEPTH_ROS_HUMBLE=/path/to/its/install.sh), in a Python 3.8 venv with the Jetson's numpy and
# OpenCV. `make test-humble` runs the ROS tests there, once per RMW (the RMW-independent ones,
# node logic on small frames, with the first only).
HUMBLE_TREE ?= $(firstword $(DEPTH_ROS_HUMBLE) \
	$(wildcard $(addsuffix /ros2-humble-py38/install.sh,$(SHARED_DIRS))))
VENV_HUMBLE ?= .venv-humble
VENV_HUMBLE_ORT ?= .venv-humble-ort
HUMBLE_FIRSTRUN_TESTS ?= \
	test/test_launch_graph.py::test_no_model_argument_runs_the_default_model_from_the_hub_cache \
	test/test_colcon_workspace.py::test_no_model_argument_offline_one_fatal_line_then_clouds_from_the_hub_cache
# The demo (no ROS) on the robot's `pip install depth_ros[onnx]`: onnxruntime, no torch. Once, in
# the same venv (not per RMW): without --model it runs the hub cache's model, offline with nothing
# cached it is one line. The public-layout model file comes from the Kilted tier (test/.models).
FIRSTRUN_CLI_TESTS ?= test/test_cli_demo.py
HUMBLE_RMWS ?= rmw_fastrtps_cpp rmw_cyclonedds_cpp
# Both modes (composed:=true|false): test_launch*.py, and test_composed.py (the composed
# process: its same-output and Ctrl-C cases per RMW, its faults in the logic lane).
HUMBLE_TESTS ?= test/test_nodes_core.py test/test_ros_conversions.py test/test_graph_zed.py \
	test/test_faults.py test/test_launch.py test/test_launch_graph.py test/test_colcon_workspace.py \
	test/test_composed.py
HUMBLE_LOGIC_TESTS ?= test/test_graph_timing.py test/test_graph_nodes.py test/test_faults.py \
	test/test_launch_graph.py test/test_composed.py test/test_sources.py
# `colcon test` of the unit suite runs on Kilted (it needs torch and onnxruntime, which the
# Humble venv does not have); the Humble tier builds, launches and drives the workspace.
HUMBLE_DESELECT ?= test/test_colcon_workspace.py::test_colcon_test_runs_the_suite_and_test_result_counts_it

# Nothing here runs in parallel under `make -j`: the ROS tiers share DDS and two cores, and a
# sub-make would inherit the jobserver. test-humble runs its two lanes as shell jobs.
.NOTPARALLEL:

.PHONY: demo test test-venvs test-kilted test-py38 test-humble test-humble-transport test-humble-logic test-unit \
	test-humble-firstrun test-humble-firstrun-cli \
	lint bench venv clean

$(VENV)/.stamp-base: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[onnx,export,tools]'
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-base setup.py
	$(PY) -m pip install -q -e '.[ros,onnx,export,marigold,tools,dev]'
	touch $@

# Once: the system's launch stack when a sourced ROS 2 install provides it, else install.sh into
# the venv, else nothing (the real-launch tests then skip and say why).
$(VENV)/.stamp-launch: $(VENV)/.stamp-dev
	@if [ ! -f $(VENV)/.ros2-launch-stack ] && $(PY) -c 'import launch, launch_ros, launch_pytest, ros2cli' 2>/dev/null; then \
		echo "launch stack: using the installed ROS 2 launch"; \
	elif [ -n "$(LAUNCH_STACK)" ] && [ -f "$(LAUNCH_STACK)" ]; then \
		bash "$(LAUNCH_STACK)" $(VENV); \
	else \
		echo "launch stack: ../shared/ros2-launch-stack/install.sh not found and no ROS 2 install sourced: the real-launch tests will skip"; \
	fi
	touch $@

venv: $(VENV)/.stamp-launch

demo: $(VENV)/.stamp-base
	$(PY) -m depth_ros.cli demo --out out/demo

# The venvs of every tier, built at once before any test runs (they share nothing but pip's
# cache; on two cores about a minute and a half less than one after the other). A failed build
# fails the target, after the others have ended. With PY38_TIER=1 (as `make test` runs it) the
# Python 3.8 tier (CPU work, no graph: ~40 s) runs there too, once its venv and the Kilted
# venv's first step (.stamp-base: torch, transformers) are in, beside the rest of that venv's
# build (~60 s: the ROS wheels, the test tools, the launch stack): first the public-layout
# model files it reads are exported with that torch (the Python 3.8 venv has none).
# $(call up_to_date,STAMP): a shell test, true once STAMP is built and newer than what it is
# built from (make -q), not merely there: a venv being rebuilt is not one to run in.
up_to_date = $(MAKE) -q --no-print-directory $(1) > /dev/null 2>&1
TEST_VENVS := $(VENV)/.stamp-launch $(VENV38)/.stamp \
	$(if $(HUMBLE_TREE),$(VENV_HUMBLE)/.stamp $(VENV_HUMBLE_ORT)/.stamp)
PY38_TIER ?=
test-venvs:
	@start=$$(date +%s); pids=""; kilted=""; py38=""; for stamp in $(TEST_VENVS); do \
		$(MAKE) --no-print-directory $$stamp & pids="$$pids $$!"; \
		[ "$$stamp" = "$(VENV)/.stamp-launch" ] && kilted=$$!; \
		[ "$$stamp" = "$(VENV38)/.stamp" ] && py38=$$!; done; \
	$(if $(PY38_TIER),{ while { ! $(call up_to_date,$(VENV38)/.stamp) && kill -0 $$py38 2>/dev/null; } || \
			{ ! $(call up_to_date,$(VENV)/.stamp-base) && kill -0 $$kilted 2>/dev/null; }; do sleep 1; done; \
		$(call up_to_date,$(VENV38)/.stamp) && $(call up_to_date,$(VENV)/.stamp-base) && \
		$(PY) test/model_files.py tiny vits > /dev/null && \
		$(MAKE) --no-print-directory test-py38; } & pids="$$pids $$!";) \
	code=0; for pid in $$pids; do wait $$pid || code=1; done; \
	echo "== the venvs$(if $(PY38_TIER), and the Python 3.8 tier,): $$(( $$(date +%s) - start )) s"; \
	[ $$code -eq 0 ] || echo "test-venvs: a venv failed to build$(if $(PY38_TIER), or the Python 3.8 tier failed,) (its lines above)"; \
	exit $$code

# Each lane prints its time, skips and result (test/run_lane.sh), the Kilted tier its slowest
# tests too (what to look at when the suite grows: CI has 90 minutes, and the suite is kept
# under 15 on two cores). The Python 3.8 tier runs beside the venvs' build (PY38_TIER=1).
test:
	@$(MAKE) --no-print-directory test-venvs PY38_TIER=1
	@$(MAKE) --no-print-directory test-kilted
	@$(MAKE) --no-print-directory test-humble

# The Kilted tier (Python 3, the PyPI ROS 2 wheels, Fast DDS) in two lanes at once, as the Humble
# tier: the RMW-independent tests (node logic on 64x48 frames, mostly waiting on /diagnostics),
# then the tests that are neither graph nor launch (the linters, ~20 s, and the slow unit tests:
# ViT-S exports and parities, the hang guard, ~60 s of CPU), beside everything else (the
# graph, the launch file, colcon, the other unit tests). One after the other they took 421-465
# s; at once ~280 each. Each pytest session claims its own ROS domain (test/conftest.py), so
# the lanes never see each other's topics.
KILTED_LANE_TIMEOUT ?= 1200
KILTED_CPU_LANE := (linter or slow) and not graph and not launch_file and not rmw_independent
# $(call kilted_lane,LABEL,LOG NAME): run_lane.sh and pytest up to its arguments.
kilted_lane = bash test/run_lane.sh "ROS 2 Kilted wheels, $$($(PY) -V), $(1)" $(VENV)/$(2).log \
	$(KILTED_LANE_TIMEOUT) $(PY) -m pytest -q -rs -p no:cacheprovider
test-kilted: $(VENV)/.stamp-launch
	@{ $(call kilted_lane,RMW-independent,logic) -m rmw_independent test; code=$$?; \
		$(call kilted_lane,linters and slow unit tests,cpu) -m "$(KILTED_CPU_LANE)" test || code=1; \
		exit $$code; } & logic=$$!; \
		$(call kilted_lane,the rest,rest) --durations=15 \
		-m "not rmw_independent and not ($(KILTED_CPU_LANE))" test; rest=$$?; \
		wait $$logic; logic=$$?; \
		[ $$rest -eq 0 ] && [ $$logic -eq 0 ] || { echo "test-kilted: failed (the rest: exit $$rest, RMW-independent lane then linters and slow unit tests: exit $$logic)"; exit 1; }

test-unit: $(VENV)/.stamp-launch
	$(PY) -m pytest -q -m "not slow and not graph" test

$(VENV38)/.stamp: setup.py
	@test -x "$(PY38)" || { echo "Python 3.8 not found at $(PY38): set PY38=/path/to/python3.8"; exit 1; }
	$(PY38) -m venv $(VENV38)
	$(VENV38)/bin/python -m pip install -q --upgrade pip
	# The Jetson's own versions: Ubuntu 20.04 numpy 1.17.4, JetPack 5.1 OpenCV 4.5.4. onnx 1.15.0
	# is the last onnx that installs with numpy 1.17.4; no onnxruntime that reads opset 17 does
	# (1.13+ need numpy >= 1.21.6, 1.10 reads opset <= 15), so the tests that run ONNX Runtime
	# skip here and say why.
	$(VENV38)/bin/python -m pip install -q -e '.[base]' 'pytest<8.4' pytest-timeout \
		'numpy==1.17.4' 'opencv-python-headless==4.5.4.60' 'onnx==1.15.0' huggingface_hub \
		filelock
	touch $@

test-py38: $(VENV38)/.stamp
	@bash test/run_lane.sh "Python 3.8, numpy 1.17.4, OpenCV 4.5.4 (the Jetson's)" $(VENV38)/pytest.log \
		$(HUMBLE_LANE_TIMEOUT) $(VENV38)/bin/python -m pytest -q -rs -p no:cacheprovider $(PY38_TESTS)

# The tree's runtime requirements, the Jetson's numpy 1.17.4 and OpenCV 4.5.4, colcon for this
# Python (a workspace on the Humble underlay installs into lib/python3.8), and what the tests use
# (the bundled sample needs scikit-image; bags, rosbags). The tree is unpacked inside the venv.
# pip runs outside the checkout: Python 3.8's pip reads ./setup.cfg's [install] section (our
# scripts go to lib/depth_ros) and would install colcon's and pytest's scripts there too.
$(VENV_HUMBLE)/.stamp: setup.py $(HUMBLE_TREE)
	@test -x "$(PY38)" || { echo "Python 3.8 not found at $(PY38): set PY38=/path/to/python3.8"; exit 1; }
	rm -rf $(VENV_HUMBLE)
	$(PY38) -m venv $(VENV_HUMBLE)
	cd $(VENV_HUMBLE) && bin/python -m pip install -q --upgrade pip
	cd $(VENV_HUMBLE) && bin/python -m pip install -q \
		-r $(abspath $(dir $(HUMBLE_TREE)))/requirements-runtime.txt \
		'numpy==1.17.4' 'opencv-python-headless==4.5.4.60' 'pytest<8.4' pytest-timeout PyYAML \
		tqdm scikit-image rosbags colcon-common-extensions
	bash $(HUMBLE_TREE) $(abspath $(VENV_HUMBLE))/ros2-humble
	touch $@

$(VENV_HUMBLE_ORT)/.stamp: setup.py $(HUMBLE_TREE)
	@test -x "$(PY38)" || { echo "Python 3.8 not found at $(PY38): set PY38=/path/to/python3.8"; exit 1; }
	rm -rf $(VENV_HUMBLE_ORT)
	$(PY38) -m venv $(VENV_HUMBLE_ORT)
	cd $(VENV_HUMBLE_ORT) && bin/python -m pip install -q --upgrade pip
	cd $(VENV_HUMBLE_ORT) && bin/python -m pip install -q 'numpy==1.24.4' PyYAML lark packaging \
		netifaces catkin_pkg 'opencv-python-headless==4.5.4.60' 'onnxruntime<1.20' onnx \
		huggingface_hub filelock 'pytest<8.4' pytest-timeout tqdm scikit-image rosbags \
		colcon-common-extensions
	bash $(HUMBLE_TREE) $(abspath $(VENV_HUMBLE_ORT))/ros2-humble
	touch $@

# $(call humble_pytest,RMW,LABEL,LOG,PYTEST ARGUMENTS[,VENV]): pytest with Humble sourced and the venv's
# python3.8 first on PATH (the tree's console scripts run `python3.8`), as a lane
# (test/run_lane.sh: the output goes to LOG; printed are its summary, the skip reasons counted,
# or, when a test failed, all of it). Each test has HUMBLE_TEST_TIMEOUT seconds (pytest-timeout,
# set-up and teardown included): 5 times the slowest test of any Humble lane, with two lanes at
# once (docs/testing.md, Hangs), and above every wait inside those tests, whose messages say
# more. A test past it fails, the lane goes on; one stuck in C code, where pytest-timeout cannot
# act, ends pytest 60 s later with every thread's stack (test/hang_guard.py). A lane that
# outlives HUMBLE_LANE_TIMEOUT seconds all the same is stopped and fails with its log.
HUMBLE_LANE_TIMEOUT ?= 900
HUMBLE_TEST_TIMEOUT ?= 120
define humble_pytest
	@bash -c 'export PATH="$(abspath $(or $(5),$(VENV_HUMBLE)))/bin:$$PATH"; \
		. "$(abspath $(or $(5),$(VENV_HUMBLE)))/ros2-humble/setup.bash" && \
		export RMW_IMPLEMENTATION=$(1) && \
		exec bash test/run_lane.sh "ROS 2 Humble, Python 3.8, $(2)" $(3) $(HUMBLE_LANE_TIMEOUT) \
		python -m pytest -q -rs -p no:cacheprovider $(4)'
endef

ifeq ($(HUMBLE_TREE),)
test-humble:
	@echo "test-humble: skipped: no shared/ros2-humble-py38 next to the checkout, next to its origin or in /work/shared (set DEPTH_ROS_HUMBLE=/path/to/ros2-humble-py38/install.sh)"
else
# Two lanes at once. The transport lane runs what depends on the RMW (real images through the
# graph and the launch file, the colcon workspace, start-up lines, shutdown) with each RMW in
# turn, never two at once: two of those at once overflowed Cyclone DDS's socket buffers on two
# shared cores (5 clouds/s instead of 10). The logic lane runs the RMW-independent tests (marker
# rmw_independent: node logic on 64x48 frames, the offline tools, the pairing's timing) once,
# with the first RMW; it mostly waits on /diagnostics. Its 30 fps timing test comes first, so
# that it meets the start of the transport lane, not the rate check at its end.
# The lanes are two shell jobs, not `make -j2`: a sub-make inherits the jobserver, so once the
# logic lane ended, the transport lane's sub-make started its second RMW beside the first (both
# DDS at once on a slower machine), and there GNU make 4.3 once lost its job ("wait: No child
# processes") and hung until CI's limit.
test-humble: $(VENV_HUMBLE)/.stamp
	@$(MAKE) --no-print-directory test-humble-logic & logic=$$!; \
		$(MAKE) --no-print-directory test-humble-transport; transport=$$?; \
		wait $$logic; logic=$$?; \
		[ $$transport -eq 0 ] && [ $$logic -eq 0 ] || { echo "test-humble: failed (transport lane: exit $$transport, logic lane: exit $$logic)"; exit 1; }
	@$(MAKE) --no-print-directory test-humble-firstrun
endif

test-humble-transport: $(VENV_HUMBLE)/.stamp
	@code=0; for rmw in $(HUMBLE_RMWS); do \
		$(MAKE) --no-print-directory test-humble-$$rmw || code=1; done; exit $$code

test-humble-logic: $(VENV_HUMBLE)/.stamp
	$(call humble_pytest,$(firstword $(HUMBLE_RMWS)),$(firstword $(HUMBLE_RMWS)) RMW-independent,$(VENV_HUMBLE)/logic.log,-m rmw_independent --timeout $(HUMBLE_TEST_TIMEOUT) $(HUMBLE_LOGIC_TESTS))

# The user's first command with no backend and no model argument: without TensorRT it runs ONNX
# Runtime on the public model (opset 17). No onnxruntime that reads it installs with numpy 1.17.4,
# so these run in a second Humble venv with what `pip install depth_ros[onnx]` brings on Python
# 3.8: numpy 1.24.4, onnxruntime 1.19 (the Humble tree takes numpy 1.17 to 1.24), each RMW.
test-humble-firstrun: $(VENV_HUMBLE_ORT)/.stamp
	@code=0; for rmw in $(HUMBLE_RMWS); do \
		$(MAKE) --no-print-directory test-humble-firstrun-$$rmw || code=1; done; \
		$(MAKE) --no-print-directory test-humble-firstrun-cli || code=1; exit $$code

test-humble-firstrun-cli: $(VENV_HUMBLE_ORT)/.stamp
	$(call humble_pytest,$(firstword $(HUMBLE_RMWS)),the demo without torch (numpy 1.24.4 + onnxruntime),$(VENV_HUMBLE_ORT)/cli.log,--timeout $(HUMBLE_TEST_TIMEOUT) $(FIRSTRUN_CLI_TESTS),$(VENV_HUMBLE_ORT))

test-humble-firstrun-%: $(VENV_HUMBLE_ORT)/.stamp
	$(call humble_pytest,$*,$* first run (numpy 1.24.4 + onnxruntime),$(VENV_HUMBLE_ORT)/$*.log,--timeout $(HUMBLE_TEST_TIMEOUT) $(HUMBLE_FIRSTRUN_TESTS),$(VENV_HUMBLE_ORT))

test-humble-%: $(VENV_HUMBLE)/.stamp
	$(call humble_pytest,$*,$*,$(VENV_HUMBLE)/$*.log,-m "not rmw_independent" --timeout $(HUMBLE_TEST_TIMEOUT) --deselect $(HUMBLE_DESELECT) $(HUMBLE_TESTS))

lint: $(VENV)/.stamp-dev
	$(PY) -m flake8 depth_ros launch test benchmarks setup.py
	$(PY) -m flake8 --max-complexity 10 depth_ros/core
	$(PY) -m pytest -q -p no:cacheprovider test/test_flake8.py test/test_pep257.py

bench: $(VENV)/.stamp-dev
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(VENV) $(VENV38) $(VENV_HUMBLE) $(VENV_HUMBLE_ORT) build install log *.egg-info out
