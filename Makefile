# The two commands of the README:
#   make run    run the gateway on the bundled example config
#   make test   run the whole test suite (what CI runs)

.PHONY: run test bench pgo

run:
	./scripts/run-example.sh

test:
	./scripts/test.sh

bench:
	./bench/run.sh

# The production binary, profile-guided and laid out by BOLT
# (target/pgo/release/wasmgate; BOLT=0 for PGO only).
pgo:
	./scripts/pgo.sh
