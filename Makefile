# Every target sets up .venv itself (scripts/setup.sh), so each works on a fresh clone.
.PHONY: setup tools demo test bench lint sample quality-model clean

VENV := .venv
BIN := $(VENV)/bin

setup:
	@scripts/setup.sh

## checkov in its own venv (.venv-tools), for the infrastructure checks of the test suite.
tools:
	@scripts/setup-tools.sh

## The main job: build a corpus from the bundled sample, train a small model on it, generate text.
## Each run starts over: runs/demo from an earlier demo is removed first.
demo: setup
	rm -rf runs/demo
	$(BIN)/gristmill run configs/demo.yaml
	$(BIN)/gristmill train configs/demo.yaml --data runs/demo/tokens/_manifest.json --output runs/demo/model
	$(BIN)/gristmill generate --checkpoint runs/demo/model --prompt "The old house" --max-new-tokens 80 --seed 0

## The test suite (what .ci/run calls).
test:
	@scripts/setup.sh --browser
	@scripts/setup-tools.sh
	$(BIN)/python -m pytest -q tests

## Benchmarks (tests/bench), not part of the test suite.
bench: setup
	$(BIN)/python -m pytest -q -s tests/bench

lint: setup
	$(BIN)/ruff check .

## Rebuild data/sample from ../shared/data.
sample: setup
	$(BIN)/python scripts/make_sample.py

## Rebuild the bundled quality classifier (pipelines/resources/quality.ftz) from ../shared/data.
quality-model: setup
	$(BIN)/python scripts/build_quality_model.py

clean:
	rm -rf runs
