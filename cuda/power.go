//go:build cuda

package cuda

// The GPU's clock and power while the steps run (issue 8, v22). An H200
// (and an H100 SXM) training Phi-3-mini draws its whole 700 W limit within
// a second, and the driver then holds the SM clock at ~1.45-1.73 GHz of its
// 1.98 ("SW power cap"): the step's time follows its energy. The benchmark
// samples NVML (the library nvidia-smi reads, opened with dlopen as cuBLAS
// is: libnvidia-ml.so.1 ships with the driver) during the timed steps, so
// that each row says at what clock and power it ran, and machines of one
// kind that differ by a few percent can be told apart. A development aid:
// the trainer does not use it.

/*
#cgo LDFLAGS: -ldl -lcuda
#include <cuda.h>
#include <dlfcn.h>
#include <stdlib.h>

typedef int (*nvml_init_t)(void);
typedef int (*nvml_by_bus_t)(const char*, void**);
typedef int (*nvml_clock_t)(void*, int, unsigned*);
typedef int (*nvml_uint_t)(void*, unsigned*);
typedef int (*nvml_ull_t)(void*, unsigned long long*);

static nvml_init_t nvml_p_init;
static nvml_by_bus_t nvml_p_by_bus;
static nvml_clock_t nvml_p_clock;
static nvml_uint_t nvml_p_power, nvml_p_limit;
static nvml_ull_t nvml_p_reasons, nvml_p_energy;

static const char* nvml_open(const char* path) {
	void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!lib) return dlerror();
	nvml_p_init = (nvml_init_t)dlsym(lib, "nvmlInit_v2");
	nvml_p_by_bus = (nvml_by_bus_t)dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2");
	nvml_p_clock = (nvml_clock_t)dlsym(lib, "nvmlDeviceGetClockInfo");
	nvml_p_power = (nvml_uint_t)dlsym(lib, "nvmlDeviceGetPowerUsage");
	nvml_p_limit = (nvml_uint_t)dlsym(lib, "nvmlDeviceGetEnforcedPowerLimit");
	nvml_p_reasons = (nvml_ull_t)dlsym(lib, "nvmlDeviceGetCurrentClocksEventReasons");
	if (!nvml_p_reasons) nvml_p_reasons = (nvml_ull_t)dlsym(lib, "nvmlDeviceGetCurrentClocksThrottleReasons");
	nvml_p_energy = (nvml_ull_t)dlsym(lib, "nvmlDeviceGetTotalEnergyConsumption");
	if (!nvml_p_init || !nvml_p_by_bus || !nvml_p_clock || !nvml_p_power || !nvml_p_limit || !nvml_p_reasons || !nvml_p_energy) {
		dlclose(lib);
		return "an NVML function (nvmlInit_v2, nvmlDeviceGetClockInfo, nvmlDeviceGetPowerUsage, ...) is missing";
	}
	return NULL;
}

// nvml_device: NVML's handle of CUDA device ordinal dev (by PCI bus id, as
// CUDA_VISIBLE_DEVICES may renumber).
static int nvml_device(int dev, void** h) {
	char bus[32];
	int st = nvml_p_init();
	if (st != 0) return 1000 + st;
	if (cuDeviceGetPCIBusId(bus, sizeof bus, dev) != CUDA_SUCCESS) return 2000;
	return nvml_p_by_bus(bus, h);
}

// nvml_sample: the SM clock (MHz, NVML_CLOCK_SM = 1) and the board's
// power (mW).
static int nvml_sample(void* h, unsigned* mhz, unsigned* mw) {
	int st = nvml_p_clock(h, 1, mhz);
	if (st == 0) st = nvml_p_power(h, mw);
	return st;
}
// nvml_reasons: the clock event reasons (bit 0x4: software power cap);
// not every board reports them.
static int nvml_reasons(void* h, unsigned long long* reasons) { return nvml_p_reasons(h, reasons); }
static int nvml_limit(void* h, unsigned* mw) { return nvml_p_limit(h, mw); }
// nvml_energy: the board's energy since the driver loaded (mJ).
static int nvml_energy(void* h, unsigned long long* mj) { return nvml_p_energy(h, mj); }
*/
import "C"

import (
	"fmt"
	"sync"
	"time"
	"unsafe"
)

// PowerStats summarises the samples of a PowerSampler.
type PowerStats struct {
	Samples    int
	MeanSMMHz  float64 // the SM clock's mean
	MinSMMHz   float64
	MeanPowerW float64 // the board's power draw's mean
	LimitW     float64 // the enforced power limit
	CappedFrac float64 // the share of samples with the software power cap in force (of those whose reasons the board reported)
	EnergyJ    float64 // the board's energy between start and Stop (its counter, not the samples)
	Seconds    float64 // the time between start and Stop
}

// String is one line for the benchmark's output.
func (s PowerStats) String() string {
	if s.Samples == 0 {
		return "no clock samples"
	}
	return fmt.Sprintf("SM clock %.0f MHz (min %.0f), %.0f W of %.0f W, power-capped in %.0f%% of %d samples, %.1f J in %.2f s (%.0f W)",
		s.MeanSMMHz, s.MinSMMHz, s.MeanPowerW, s.LimitW, 100*s.CappedFrac, s.Samples, s.EnergyJ, s.Seconds, s.EnergyJ/max(s.Seconds, 1e-9))
}

// nvmlPowerCap is NVML's clock event reason "SW power cap".
const nvmlPowerCap = 0x4

var nvmlLoad struct {
	once sync.Once
	err  error
}

// PowerSampler samples the GPU's SM clock and power every interval until
// Stop.
type PowerSampler struct {
	h      unsafe.Pointer
	limitW float64
	stop   chan struct{}
	done   chan PowerStats
	mj0    C.ulonglong // the energy counter at the start
	t0     time.Time
}

// StartPowerSampling starts sampling the backend's GPU every interval. It
// fails where NVML cannot be opened (OLLAMA_TUNE_NVML names the library).
func (b *Backend) StartPowerSampling(interval time.Duration) (*PowerSampler, error) {
	nvmlLoad.once.Do(func() {
		_, names, msgs := openFirst([]string{"libnvidia-ml.so.1", "libnvidia-ml.so"}, "OLLAMA_TUNE_NVML",
			func(p *C.char) *C.char { return C.nvml_open(p) })
		if msgs != nil {
			nvmlLoad.err = fmt.Errorf("cannot load NVML (tried %v): %v; it comes with the NVIDIA driver, or set OLLAMA_TUNE_NVML to its path", names, msgs)
		}
	})
	if nvmlLoad.err != nil {
		return nil, nvmlLoad.err
	}
	var h unsafe.Pointer
	if st := C.nvml_device(C.int(b.info.Ordinal), &h); st != 0 {
		return nil, fmt.Errorf("NVML: no handle for CUDA device %d (status %d)", b.info.Ordinal, int(st))
	}
	var mw C.uint
	if st := C.nvml_limit(h, &mw); st != 0 {
		return nil, fmt.Errorf("NVML: power limit (status %d)", int(st))
	}
	s := &PowerSampler{h: h, limitW: float64(mw) / 1000, stop: make(chan struct{}), done: make(chan PowerStats, 1)}
	if st := C.nvml_energy(h, &s.mj0); st != 0 {
		return nil, fmt.Errorf("NVML: energy counter (status %d)", int(st))
	}
	s.t0 = time.Now()
	go s.run(interval)
	return s, nil
}

func (s *PowerSampler) run(interval time.Duration) {
	st := PowerStats{LimitW: s.limitW}
	var mhzSum, wSum float64
	capped, reported := 0, 0
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		var mhz, mw C.uint
		var reasons C.ulonglong
		if C.nvml_sample(s.h, &mhz, &mw) == 0 {
			f := float64(mhz)
			if st.Samples == 0 || f < st.MinSMMHz {
				st.MinSMMHz = f
			}
			st.Samples++
			mhzSum += f
			wSum += float64(mw) / 1000
			if C.nvml_reasons(s.h, &reasons) == 0 {
				reported++
				if reasons&nvmlPowerCap != 0 {
					capped++
				}
			}
		}
		select {
		case <-s.stop:
			if st.Samples > 0 {
				n := float64(st.Samples)
				st.MeanSMMHz, st.MeanPowerW = mhzSum/n, wSum/n
			}
			if reported > 0 {
				st.CappedFrac = float64(capped) / float64(reported)
			}
			s.done <- st
			return
		case <-t.C:
		}
	}
}

// Stop ends the sampling and returns its summary. The energy is the
// counter's difference (the driver updates it every few ms): call Stop
// right after the GPU's last work of the window.
func (s *PowerSampler) Stop() PowerStats {
	var mj C.ulonglong
	ok := C.nvml_energy(s.h, &mj) == 0
	secs := time.Since(s.t0).Seconds()
	close(s.stop)
	st := <-s.done
	if ok {
		st.EnergyJ = float64(mj-s.mj0) / 1000
	}
	st.Seconds = secs
	return st
}
