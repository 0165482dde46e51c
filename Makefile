# ollama-tune. `make build` builds the host CLI and the CPU trainer plugin into
# bin/; `make test` is what CI runs (.ci/run); `make bench` prints the CPU
# benchmark table recorded in BENCHMARKS.md.
GO      ?= go
BIN     ?= bin
PKGS    ?= ./...
GOFLAGS ?=

.PHONY: build test test-short bench vet fmt proto clean

build:
	@mkdir -p $(BIN)
	$(GO) build $(GOFLAGS) -o $(BIN)/ ./cmd/...

test: vet
	$(GO) test $(GOFLAGS) -count=1 -timeout 30m $(PKGS)

test-short:
	$(GO) test $(GOFLAGS) -short -count=1 $(PKGS)

vet:
	$(GO) vet $(PKGS)

# CPU forward+backward tokens/s for the tiny and the mid-size config.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./finetune/

# Regenerate plugin/proto (needs protoc: apt-get install -y protobuf-compiler;
# go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
# google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2).
proto:
	cd plugin/proto && PATH="$$PATH:$$($(GO) env GOPATH)/bin" $(GO) generate .

fmt:
	gofmt -l -w .

clean:
	rm -rf $(BIN)
