# The two commands of the README. Both do all the set-up first (scripts/bootstrap.sh).
#   make demo   local PostgreSQL + sample tenants + proxy on 127.0.0.1:6432; Ctrl-C cleans up
#   make test   the whole test suite (PYTEST_ARGS="-k routing" to narrow it)
#   make bench  benchmarks/ against direct PostgreSQL and PgBouncer (BENCH_ARGS="--quick")
VENV := .venv
PYTEST_ARGS ?=

.PHONY: bootstrap demo test bench

bootstrap:
	bash scripts/bootstrap.sh

demo: bootstrap
	$(VENV)/bin/tenantgate demo

# pytest exits 5 when it collected no tests: that is a failure here too.
test: bootstrap
	@$(VENV)/bin/pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# Not part of the quick start: installs pgbouncer and matplotlib, runs ~12 minutes.
BENCH_ARGS ?=
bench:
	bash benchmarks/setup.sh
	$(VENV)/bin/python benchmarks/run.py $(BENCH_ARGS)
