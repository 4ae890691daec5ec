# tablecopy — the two commands a new user needs are `make demo` and `make test`.
.PHONY: demo demo-online test bench bench-scale lint lint-infra build fmt localstack stop clean

## make demo: LocalStack, sample data, a copy job with a progress bar, the verified result
demo:
	scripts/demo.sh

## make demo-online: the same with the application writing all along: an online job (it enables the source's stream), catch-up, `complete`, the verified result
demo-online:
	scripts/demo-online.sh

## make test: unit tests + LocalStack integration tests (starts and stops LocalStack itself)
test:
	scripts/test.sh

## make bench: items/s of a real copy next to the raw BatchWriteItem ceiling (N=100000 by default)
bench:
	scripts/bench.sh

## make bench-scale: one job of 256 and one of 1,000 segments over 50,000 items with small slices: time, conflicts, control-table writes and SQS messages per 1,000 items, peak job item size
bench-scale:
	BENCH_BIN=bench-scale BENCH_MODES=$${BENCH_MODES:-memory} scripts/bench.sh

## make lint: formatting and clippy, as CI checks them
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

## make lint-infra: sam validate --lint, cfn-lint and checkov on infra/template.yaml (installs the tools)
lint-infra:
	scripts/infra.sh lint

## make build: sam build, the four Lambda bootstraps (provided.al2023) under .aws-sam/build
build:
	scripts/infra.sh build

fmt:
	cargo fmt --all

## make localstack / make stop: start or stop LocalStack by hand
localstack:
	scripts/localstack.sh start

stop:
	scripts/localstack.sh stop

clean:
	cargo clean
	rm -rf .cache .aws-sam
