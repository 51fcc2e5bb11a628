# Two entry points that set themselves up on a fresh machine with Python 3.11:
#   make train   create .venv, install, prepare data, train (local Ray), forecast
#   make test    create .venv, install, run the test suite
#   make bench / make accuracy   the figures in the README
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test bench accuracy clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py $(ARGS)
	$(BIN)/python infer.py

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/training.py
	$(BIN)/python bench/inference.py

# The headline backtest end to end: train the local default into runs/accuracy, then score
# January 2015 (a cutoff every midnight) against the seasonal-naive baselines.
accuracy: $(STAMP)
	$(BIN)/python train.py --name accuracy
	$(BIN)/python bench/accuracy.py --run runs/accuracy

clean:
	rm -rf $(VENV) build *.egg-info
