//go:build cuda

package cuda

import (
	"testing"
	"time"
)

// TestPowerSampling: NVML gives the GPU's SM clock, power and limit while
// the sampler runs (the benchmark's clock column, v22); a machine without
// NVML skips, saying why.
func TestPowerSampling(t *testing.T) {
	s, err := gpu.StartPowerSampling(5 * time.Millisecond)
	if err != nil {
		t.Skip(err)
	}
	// NVML's energy counter moves in steps (one run of 60 ms, v23, saw it
	// stand still on an idle board): a window several of them long.
	time.Sleep(300 * time.Millisecond)
	st := s.Stop()
	t.Log(st)
	if st.Samples < 2 || st.MeanSMMHz <= 0 || st.MinSMMHz <= 0 || st.MinSMMHz > st.MeanSMMHz || st.MeanPowerW <= 0 || st.LimitW <= 0 ||
		st.CappedFrac < 0 || st.CappedFrac > 1 {
		t.Errorf("implausible samples: %+v", st)
	}
	if st.Seconds < 0.25 || st.EnergyJ <= 0 || st.EnergyJ/st.Seconds > 1.5*st.LimitW {
		t.Errorf("energy %.3f J in %.3f s: implausible", st.EnergyJ, st.Seconds)
	}
	if st.MeanPowerW > 1.5*st.LimitW {
		t.Errorf("power %.0f W far above the limit %.0f W: the units are wrong", st.MeanPowerW, st.LimitW)
	}
}
