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
# Core, TensorRT layer, ZED source, the nodes' ROS-free plumbing, util, the JetPack install, and
# the default model's resolver and ONNX preparation (their onnxruntime parts skip: see below).
PY38_TESTS ?= $(wildcard test/test_core_*.py test/test_trt_*.py test/test_sources_zed.py \
	test/test_node_plumbing.py test/test_util.py test/test_jetpack_install.py \
	test/test_onnx_prepare.py test/test_default_model.py)

# The ROS 2 launch stack (launch, launch_ros, launch_pytest, ros2cli) for machines without a ROS
# install: shared/ros2-launch-stack/install.sh next to the checkout (or DEPTH_ROS_LAUNCH_STACK).
LAUNCH_STACK ?= $(firstword $(DEPTH_ROS_LAUNCH_STACK) $(wildcard ../shared/ros2-launch-stack/install.sh \
	$(dir $(CURDIR))shared/ros2-launch-stack/install.sh /work/shared/ros2-launch-stack/install.sh))

.PHONY: demo test test-py38 test-unit lint bench venv clean

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

test: $(VENV)/.stamp-launch
	$(PY) -m pytest -q test
	$(MAKE) test-py38

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
	$(VENV38)/bin/python -m pytest -q -p no:cacheprovider $(PY38_TESTS)

lint: $(VENV)/.stamp-dev
	$(PY) -m flake8 depth_ros launch test benchmarks setup.py
	$(PY) -m flake8 --max-complexity 10 depth_ros/core
	$(PY) -m pytest -q -p no:cacheprovider test/test_flake8.py test/test_pep257.py

bench: $(VENV)/.stamp-dev
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(VENV) $(VENV38) build install log *.egg-info out
