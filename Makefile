# Two commands from nothing to running: `make demo` and `make test`.
PY      := .venv/bin/python
STAMP   := .venv/.installed

.PHONY: demo test venv system-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv .venv || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of torch first, so no dependency pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip check
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	bash infra/system-deps.sh redis-server postgresql chromium

demo: $(STAMP)
	.venv/bin/g2rec demo

test: $(STAMP) system-deps
	$(PY) -m pytest -q tests

clean:
	rm -rf .venv build *.egg-info
