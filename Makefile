.PHONY: demo test test-fast sample-config bench setup

setup:
	scripts/setup.sh

demo:
	scripts/demo.sh

test:
	scripts/test.sh

test-fast:
	scripts/test.sh -m "not integration"

sample-config: setup
	.venv/bin/oslo-config-generator --config-file etc/oslo-config-generator/computeflow.conf

bench: setup
	.venv/bin/python bench/spawn_bench.py
