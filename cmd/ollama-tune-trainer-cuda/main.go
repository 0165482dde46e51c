//go:build cuda

// Command ollama-tune-trainer-cuda is the CUDA trainer plugin that
// ollama-tune starts through hashicorp/go-plugin. It is a small launcher:
// it probes the NVIDIA driver through dlopen and, when a usable GPU is
// there, replaces itself (exec, same process) with ollama-tune-cuda-worker
// from the same directory, which links the driver and serves the contract
// on package cuda's backend. Without a driver, without a GPU, with a driver
// too old or a GPU too old, it serves the contract itself and answers every
// call with a clear device error, so the host reports it and falls back to
// (or suggests) the CPU plugin, instead of seeing a process that dies
// before it can speak.
//
// Build both with the cuda tag (make build-cuda):
//
//	go build -tags cuda -o bin/ollama-tune-trainer-cuda ./cmd/ollama-tune-trainer-cuda
//	go build -tags cuda -o bin/ollama-tune-cuda-worker ./cmd/ollama-tune-trainer-cuda/worker
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/ollama-tune/ollama-tune/plugin"
)

// WorkerName is the worker executable's file name; it does not start with
// plugin.BinaryPrefix, so the host never mistakes it for a plugin.
const WorkerName = "ollama-tune-cuda-worker"

// workerEnv overrides the worker's path (tests, unusual installs).
const workerEnv = "OLLAMA_TUNE_CUDA_WORKER"

func main() {
	_, err := probeDriver("libcuda.so.1")
	if err == nil {
		err = execWorker() // returns only when the exec failed
	}
	serveUnavailable(err)
}

// workerPath is the worker beside this executable (or $OLLAMA_TUNE_CUDA_WORKER).
func workerPath() (string, error) {
	if p := os.Getenv(workerEnv); p != "" {
		return p, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find this executable: %w", err)
	}
	if real, err := filepath.EvalSymlinks(exe); err == nil {
		exe = real
	}
	return filepath.Join(filepath.Dir(exe), WorkerName), nil
}

// execWorker replaces this process with the worker, keeping its
// arguments, environment and standard streams (the go-plugin handshake
// goes to the host from the worker).
func execWorker() error {
	w, err := workerPath()
	if err != nil {
		return err
	}
	if st, err := os.Stat(w); err != nil || !st.Mode().IsRegular() {
		return fmt.Errorf("the CUDA worker %s is missing; build it next to %s with make build-cuda", w, os.Args[0])
	}
	err = syscall.Exec(w, append([]string{w}, os.Args[1:]...), os.Environ())
	return fmt.Errorf("start the CUDA worker %s: %w", w, err)
}

// serveUnavailable serves the plugin contract with every call failing
// with reason (a CodeDevice error).
func serveUnavailable(reason error) {
	fail := func() error { return plugin.Errorf(plugin.CodeDevice, "cuda: %v", reason) }
	plugin.Serve(&plugin.RunnerTrainer{
		Caps: func(context.Context) (plugin.Capabilities, error) { return plugin.Capabilities{}, fail() },
		Runner: plugin.RunnerFunc(func(context.Context, plugin.TrainRequest, func(plugin.Event)) error {
			return fail()
		}),
		Generator: func(context.Context, plugin.GenerateRequest) (plugin.GenerateResponse, error) {
			return plugin.GenerateResponse{}, fail()
		},
	})
}
