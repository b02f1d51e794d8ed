# `make demo` and `make test` set everything up on a fresh machine (only Python 3.11 needed).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The one pin of DALI's TF plugin lives in pyproject.toml; it is built against the installed TF.
TF_PLUGIN := $(shell grep -o '"nvidia-dali-tf-plugin-cuda120==[^"]*"' pyproject.toml | tr -d '"')
# setup.py needs a newer setuptools than venv brings; the editable install builds without isolation
# (an isolated build would first download DALI and the CUDA header wheels, the wheel's build requirements).
SETUPTOOLS := $(shell grep -o '"setuptools==[^"]*"' pyproject.toml | tr -d '"')
STAMP := $(VENV)/.installed
# On a host with an NVIDIA driver, also TensorFlow's CUDA libraries (the `cuda` extra of pyproject.toml).
EXTRAS := test,beam,cloud,docs$(shell command -v nvidia-smi >/dev/null 2>&1 && echo ,cuda)

.PHONY: setup native demo test bench gpu-check asan clean

setup: $(STAMP) native

# dali-video's DALI operator (C++): built for this source and the installed DALI; a no-op when built.
native: $(STAMP)
	$(BIN)/python -m dali_video.loader.native

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(SETUPTOOLS)"
	$(BIN)/pip install -q --disable-pip-version-check --no-build-isolation -e ".[$(EXTRAS)]"
	$(BIN)/pip install -q --disable-pip-version-check --no-build-isolation "$(TF_PLUGIN)"
	touch $(STAMP)

demo: setup
	$(BIN)/dali-video-train

test: setup
	$(BIN)/python -m pytest -q -ra tests

bench: setup
	$(BIN)/pip install -q --disable-pip-version-check -e ".[bench]"
	$(BIN)/python -m dali_video.tools.bench $(DATA) --out bench-results --quick

# On a GPU host: dali-video-gpu-check (DALI alone, under 5 minutes: GPU vs CPU parity, clips/s, threads and
# memory against gpu_resources, the hardware JPEG decoder; fit where TensorFlow is there) writes
# gpu-check.json to send back (docs/gpu-hosts.md); then the GPU tests, which must not skip there.
gpu-check: setup
	$(BIN)/dali-video-gpu-check --out gpu-check.json
	DALI_VIDEO_REQUIRE_GPU=1 $(BIN)/python -m pytest -q -ra -m gpu tests

# The native reader under AddressSanitizer, fed damaged indexes and shards (tests/test_native.py; the
# TensorFlow-path tests cannot run there: DALI's decoders do not load under a preloaded ASan).
asan: setup
	DALI_VIDEO_SANITIZE=address $(BIN)/python -m dali_video.loader.native
	DALI_VIDEO_SANITIZE=address ASAN_OPTIONS=detect_leaks=0 \
	  LD_PRELOAD="$$(g++ -print-file-name=libasan.so) $$(g++ -print-file-name=libstdc++.so)" \
	  $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_native.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache dali_video/loader/native/_build build dist site
