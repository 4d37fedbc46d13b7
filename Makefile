# Thin aliases for ./dev.sh, which does the set-up (virtualenv, packages, test tools).
.PHONY: run test lint bench
run:
	./dev.sh run
test:
	./dev.sh test
lint:
	./dev.sh lint
bench:
	./dev.sh bench
