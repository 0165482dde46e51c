//go:build cuda

package main

import (
	"strings"
	"testing"
)

// These run on any machine: the probe only dlopens.

func TestProbeMissingDriver(t *testing.T) {
	_, err := probeDriver("libcuda-that-does-not-exist.so.1")
	if err == nil || !strings.Contains(err.Error(), "no NVIDIA driver") || !strings.Contains(err.Error(), "device: cpu") {
		t.Fatalf("error %v does not say the driver is missing and what to do", err)
	}
}

func TestProbeNotADriver(t *testing.T) {
	// A real library without the driver API.
	_, err := probeDriver("libm.so.6")
	if err == nil || !strings.Contains(err.Error(), "no NVIDIA driver") {
		t.Fatalf("error %v", err)
	}
}

func TestProbeThisMachine(t *testing.T) {
	res, err := probeDriver("libcuda.so.1")
	if err != nil {
		t.Logf("this machine: %v", err)
		if !strings.Contains(err.Error(), "device: cpu") {
			t.Errorf("error %q does not suggest device: cpu", err)
		}
		return
	}
	t.Logf("driver CUDA %d, GPUs %+v", res.Driver, res.GPUs)
	if len(res.GPUs) == 0 || res.Driver < minDriver {
		t.Errorf("probe succeeded with %+v", res)
	}
}

func TestWorkerMissing(t *testing.T) {
	t.Setenv(workerEnv, "/nonexistent/"+WorkerName)
	err := execWorker()
	if err == nil || !strings.Contains(err.Error(), "make build-cuda") {
		t.Fatalf("error %v", err)
	}
}
