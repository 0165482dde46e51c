# ollama-tune. `make build` builds the host CLI and the CPU trainer plugin into
# bin/; `make test` is what CI runs (.ci/run); `make bench` prints the CPU
# benchmark table recorded in BENCHMARKS.md.
GO      ?= go
BIN     ?= bin
PKGS    ?= ./...
GOFLAGS ?=

.PHONY: build test test-unit test-integration test-short bench vet fmt proto clean cuda-env ptx ptx-check test-gpu bench-gpu build-cuda vet-cuda

build:
	@mkdir -p $(BIN)
	$(GO) build $(GOFLAGS) -o $(BIN)/ ./cmd/...

# Everything CI runs: unit tests, the end-to-end tests against a real Ollama
# (v0.24.0 built from the Go module proxy and cached: about 18 minutes cold
# on 2 cores), and the cuda tag's vet + PTX check against CUDA 11.8 headers.
test: test-unit test-integration vet-cuda ptx-check

test-unit: vet
	$(GO) test $(GOFLAGS) -count=1 -timeout 30m $(PKGS)

test-integration:
	bash integration/build-ollama.sh >/dev/null
	OLLAMA_TUNE_INTEGRATION=1 $(GO) test $(GOFLAGS) -count=1 -timeout 30m ./integration/

test-short:
	$(GO) test $(GOFLAGS) -short -count=1 $(PKGS)

vet:
	$(GO) vet $(PKGS)

# CPU forward+backward tokens/s for the tiny and the mid-size config.
bench:
	$(GO) test -count=1 -run TestPrintBenchTable ./finetune/ -v -args -benchtable | grep -v '^=== RUN\|^--- \|^PASS\|^ok'

# Regenerate plugin/proto (needs protoc: apt-get install -y protobuf-compiler;
# go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
# google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2).
proto:
	cd plugin/proto && PATH="$$PATH:$$($(GO) env GOPATH)/bin" $(GO) generate .

# --- CUDA (build tag cuda). Headers, stubs and nvcc 11.8 come from Debian's
# non-free packages, extracted into .cuda/ by scripts/cuda-headers.sh.
CUDA_ENV = eval "$$(DEST=$(CURDIR)/.cuda bash scripts/cuda-headers.sh)" && export CGO_CFLAGS CGO_LDFLAGS NVCC

# Compile cuda/kernels/*.cu to the committed PTX (compute_80).
ptx:
	bash scripts/cuda-ptx.sh

# Fail if the committed PTX differs from what the .cu sources compile to.
ptx-check:
	bash scripts/cuda-ptx.sh --check

# Vet and compile the cuda-tagged packages against the CUDA 11.8 headers
# (and the kernels' sm_90 machine code: scripts/cuda-sass.sh runs).
vet-cuda:
	$(CUDA_ENV) && SASS_ARCHS=90 bash scripts/cuda-sass.sh && $(GO) vet -tags cuda ./cuda/... ./cmd/ollama-tune-trainer-cuda/... ./cmd/ollama-tune-bench-gpu/... && \
	  $(GO) test -count=1 -tags cuda ./cmd/ollama-tune-trainer-cuda/
	bash scripts/cuda-compat13-check.sh

# The CUDA plugin, with the kernels' machine code for sm_80 and sm_90
# (scripts/cuda-sass.sh: no JIT compilation on a machine's first run).
build-cuda:
	@mkdir -p $(BIN)
	$(CUDA_ENV) && bash scripts/cuda-sass.sh && $(GO) build -tags cuda -o $(BIN)/ollama-tune-trainer-cuda ./cmd/ollama-tune-trainer-cuda && \
	  $(GO) build -tags cuda -o $(BIN)/ollama-tune-cuda-worker ./cmd/ollama-tune-trainer-cuda/worker

# Build bin/cuda.test here; prints the command that runs it on a GPU machine.
test-gpu:
	bash scripts/test-gpu.sh

# Build the GPU benchmark into bin/gpu/ here; prints the command that runs it
# (ours with and without checkpointing, the transformers + peft baseline,
# load + quantize of a 7.64 GB checkpoint) on a GPU machine in one call.
bench-gpu:
	bash scripts/bench-gpu.sh

fmt:
	gofmt -l -w .

clean:
	rm -rf $(BIN)
