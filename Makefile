# `make demo` and `make test` set everything up on a fresh machine (only Python 3.11 needed).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The one pin of DALI's TF plugin lives in pyproject.toml; it is built against the installed TF.
TF_PLUGIN := $(shell grep -o '"nvidia-dali-tf-plugin-cuda120==[^"]*"' pyproject.toml | tr -d '"')
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test,beam]"
	$(BIN)/pip install -q --disable-pip-version-check --no-build-isolation "$(TF_PLUGIN)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dali-video-train

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra tests

bench: $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[bench]"
	$(BIN)/python -m dali_video.bench $(DATA) --out bench-results --quick

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
