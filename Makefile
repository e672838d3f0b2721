.PHONY: test proto proto-check bench
test:
	go test -race ./...
proto:
	scripts/genproto.sh
proto-check:
	scripts/genproto.sh --check
