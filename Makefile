# Two entry points that set themselves up on a fresh machine with Python 3.11:
#   make train   create .venv, install, prepare data, train (local Ray), forecast
#   make test    create .venv, install, lint (ruff), run the test suite
#   make lint    ruff check and ruff format --check (configured in pyproject.toml)
#   make bench / make accuracy   the figures in docs/results.md
#   make fleet   1,000 generated zones: train configs/fleet-local.yaml, backtest January 2015
#   make docs    regenerate docs/configuration.md from lit_forecast/config.py
# Bench scripts run from this folder as modules: .venv/bin/python -m bench.training (bench/README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test lint bench accuracy fleet docs clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py $(ARGS)
	$(BIN)/python infer.py

test: lint
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m bench.training
	$(BIN)/python -m bench.inference

# The headline backtest end to end: train the local default into runs/accuracy, then score
# January 2015 (a cutoff every midnight) against the seasonal-naive baselines with infer.py's
# default flags (the bands refitted at each cutoff on the days before it, chosen on December).
accuracy: $(STAMP)
	$(BIN)/python train.py --name accuracy
	$(BIN)/python -m bench.accuracy --run runs/accuracy

# The fleet path end to end on this machine: generate ZONES zones from the NAB city series
# (long format, timestamp,zone,value), train configs/fleet-local.yaml on them, then backtest
# every zone at every midnight of January 2015 (per-zone table and fleet plot next to the JSON).
ZONES ?= 1000
FLEET_DATA := data/zones-$(ZONES).parquet
FLEET_RUN ?= fleet_local

$(FLEET_DATA): | $(STAMP)
	mkdir -p data
	$(BIN)/python -m bench.make_zones --zones $(ZONES) --output $@

fleet: $(STAMP) $(FLEET_DATA)
	$(BIN)/python train.py --config configs/fleet-local.yaml --data $(FLEET_DATA) --name $(FLEET_RUN)
	$(BIN)/python infer.py --run runs/$(FLEET_RUN) --cutoffs 2015-01-01..2015-01-31/1D \
		--output runs/$(FLEET_RUN)/forecasts/january.parquet

docs: $(STAMP)
	$(BIN)/python -m lit_forecast.config_docs > docs/configuration.md

clean:
	rm -rf $(VENV) build *.egg-info
