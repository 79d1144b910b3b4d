# Everything runs inside .venv in the repository. On a machine without CUDA the CPU build of torch is
# installed first, so pip never pulls CUDA packages; a GPU user picks another: make TORCH_SPEC=torch setup
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
EXTRAS ?= dev
DEMO_OUT ?= out/demo
DEMO_ARGS ?=
DEMO_CONTEXT_TOKENS ?= 100000
DEMO_KEYWORDS ?= war,pandemic,famine,plague,climate,crisis,disaster,nuclear
DEMO_SEEDS ?= 4
FIGURES_DATA ?= figures/data
FIGURES_OUT ?= figures
FIGURES_FORMAT ?= html,png,svg

.PHONY: setup test demo ladder figures docs clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest -q

# sae.demo reads DEMO_<SETTING> for each of its settings (DEMO_EPOCHS=1, DEMO_REBUILD=1, ...; python -m sae.demo
# --help) and DEMO_ARGS passes any of its flags. DEMO_CONTEXT_TOKENS is the top-context budget of the
# threats neighbourhood and the atlas (one pass, kept in $(DEMO_OUT)/contexts and reused by later runs).
demo: setup
	$(BIN)/python -m sae.demo --out $(DEMO_OUT) $(DEMO_ARGS)
	$(BIN)/python -m geometry.compare demo:L15R-8x demo:L15R-32x --out $(DEMO_OUT)/compare \
		--freq-a $(DEMO_OUT)/eval/frequencies_L15R-8x.csv --freq-b $(DEMO_OUT)/eval/frequencies_L15R-32x.csv \
		--json $(DEMO_OUT)/compare/summary.json --atlas ../atlas
	$(BIN)/python -m geometry.atlas demo:L15R-8x demo:L15R-32x demo:L15R-8x-Vanilla --compare $(DEMO_OUT)/compare \
		--tokens $(DEMO_CONTEXT_TOKENS) --contexts-dir $(DEMO_OUT)/contexts --out $(DEMO_OUT)/atlas \
		--link "compare report: 8x vs 32x=../compare/report.html" --link "threats neighbourhood=../threats/neighborhood.html"
	$(BIN)/python -m geometry.neighborhood demo:L15R-8x --keywords $(DEMO_KEYWORDS) --n-seeds $(DEMO_SEEDS) \
		--members demo:L15R-8x-Vanilla=6,demo:L15R-8x=6,demo:L15R-32x=24 --tokens $(DEMO_CONTEXT_TOKENS) \
		--contexts-dir $(DEMO_OUT)/contexts --none-ok --out $(DEMO_OUT)/threats --atlas ../atlas
	@echo "demo results: $(DEMO_OUT)/eval/eval.csv, $(DEMO_OUT)/compare/report.html, $(DEMO_OUT)/atlas/index.html, $(DEMO_OUT)/threats/neighborhood.html"

# The width ladder and a second seed beside the demo suite (docs/demo.md#the-ladder-and-a-second-seed):
# trains demo:L15R-16x and demo:L15R-8x-s1 from the cached capture, then compares seed to seed and rung to rung.
ladder: setup
	$(BIN)/python -m sae.demo --ladder --out $(DEMO_OUT) $(DEMO_ARGS)
	$(BIN)/python -m geometry.compare demo:L15R-8x demo:L15R-8x-s1 --out $(DEMO_OUT)/seeds \
		--freq-a $(DEMO_OUT)/eval/frequencies_L15R-8x.csv --freq-b $(DEMO_OUT)/eval-ladder/frequencies_L15R-8x-s1.csv \
		--json $(DEMO_OUT)/seeds/summary.json
	$(BIN)/python -m geometry.compare demo:L15R-8x demo:L15R-16x --out $(DEMO_OUT)/ladder/8x-16x \
		--freq-a $(DEMO_OUT)/eval/frequencies_L15R-8x.csv --freq-b $(DEMO_OUT)/eval-ladder/frequencies_L15R-16x.csv \
		--json $(DEMO_OUT)/ladder/8x-16x/summary.json
	$(BIN)/python -m geometry.compare demo:L15R-16x demo:L15R-32x --out $(DEMO_OUT)/ladder/16x-32x \
		--freq-a $(DEMO_OUT)/eval-ladder/frequencies_L15R-16x.csv --freq-b $(DEMO_OUT)/eval/frequencies_L15R-32x.csv \
		--json $(DEMO_OUT)/ladder/16x-32x/summary.json
	@echo "ladder results: $(DEMO_OUT)/eval-ladder/eval.csv, $(DEMO_OUT)/seeds/report.html, $(DEMO_OUT)/ladder/*/report.html"

# The paper's data figures from the tables in FIGURES_DATA (docs/figures.md); PNG/SVG need a Chromium.
figures: setup
	$(BIN)/python -m geometry.figures --data $(FIGURES_DATA) --out $(FIGURES_OUT) --format $(FIGURES_FORMAT)

# The documentation (docs/, mkdocs.yml) as a site in site/; --strict fails on a broken link or a page outside the nav.
docs: setup
	$(BIN)/mkdocs build --strict -d site

clean-venv:
	rm -rf $(VENV)
