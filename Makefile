# The two commands of the README. Both set up what is missing first.
.PHONY: demo test

demo:
	@scripts/setup.sh
	@.venv/bin/gridhive demo

test:
	@scripts/setup.sh --test
	@.venv/bin/python -m pytest -q
