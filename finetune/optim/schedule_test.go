package optim

import (
	"math"
	"strings"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-15+1e-12*math.Abs(b) }

// The tutorial: 220 optimizer steps, no warm-up, lr 3e-4, linear decay.
// transformers' lambda is (220 - s) / 220 from step 0.
func TestLinearScheduleTutorial(t *testing.T) {
	for _, c := range []struct {
		step int
		want float64
	}{
		{0, 3e-4}, {1, 3e-4 * 219 / 220}, {110, 1.5e-4}, {219, 3e-4 / 220}, {220, 0}, {300, 0},
	} {
		if got := LinearWithWarmup(c.step, 220, 0, 3e-4); !near(got, c.want) {
			t.Errorf("step %d: lr %.10g, want %.10g", c.step, got, c.want)
		}
	}
}

func TestLinearScheduleWithWarmup(t *testing.T) {
	for _, c := range []struct {
		step int
		want float64
	}{
		{0, 0}, {5, 1.5e-4}, {9, 2.7e-4}, {10, 3e-4}, {115, 1.5e-4}, {219, 3e-4 / 210}, {220, 0},
	} {
		if got := LinearWithWarmup(c.step, 220, 10, 3e-4); !near(got, c.want) {
			t.Errorf("step %d: lr %.10g, want %.10g", c.step, got, c.want)
		}
	}
}

func TestCosineAndConstantSchedules(t *testing.T) {
	for _, c := range []struct {
		step int
		want float64
	}{
		{0, 0}, {10, 3e-4}, {115, 1.5e-4}, {220, 0},
		{62, 3e-4 * 0.5 * (1 + math.Cos(math.Pi*52/210))},
	} {
		if got := CosineWithWarmup(c.step, 220, 10, 3e-4); !near(got, c.want) {
			t.Errorf("cosine step %d: lr %.10g, want %.10g", c.step, got, c.want)
		}
	}
	if Constant.LR(0, 220, 10, 3e-4) != 3e-4 || Constant.LR(219, 220, 10, 3e-4) != 3e-4 {
		t.Error("constant schedule must ignore warm-up, as transformers' get_constant_schedule does")
	}
	if ConstantWithWarmup.LR(5, 220, 10, 3e-4) != 1.5e-4 || ConstantWithWarmup.LR(10, 220, 10, 3e-4) != 3e-4 {
		t.Error("constant_with_warmup wrong")
	}
	if Linear.LR(110, 220, 0, 3e-4) != LinearWithWarmup(110, 220, 0, 3e-4) || Cosine.LR(30, 220, 10, 1) != CosineWithWarmup(30, 220, 10, 1) {
		t.Error("Scheduler.LR does not dispatch")
	}
}

func TestWarmupSteps(t *testing.T) {
	if WarmupSteps(220, 0.03, 0) != 7 {
		t.Errorf("ceil(220 * 0.03) = 7, got %d", WarmupSteps(220, 0.03, 0))
	}
	// Python: 100 * 0.07 == 7.000000000000001, so math.ceil gives 8.
	if WarmupSteps(100, 0.07, 0) != 8 {
		t.Errorf("ceil(100 * 0.07) in float64 = 8, got %d", WarmupSteps(100, 0.07, 0))
	}
	if WarmupSteps(220, 0.1, 5) != 5 || WarmupSteps(220, 0, 0) != 0 {
		t.Error("explicit warmup_steps must win; no ratio means no warm-up")
	}
}

func TestParseScheduler(t *testing.T) {
	for i, name := range []string{"linear", "cosine", "constant", "constant_with_warmup"} {
		s, err := ParseScheduler(name)
		if err != nil || s != Scheduler(i) || s.String() != name {
			t.Errorf("ParseScheduler(%q) = %v, %v", name, s, err)
		}
	}
	_, err := ParseScheduler("polynomial")
	if err == nil || !strings.Contains(err.Error(), `"polynomial"`) || !strings.Contains(err.Error(), "linear, cosine, constant, constant_with_warmup") {
		t.Errorf("error should name the value and list the choices: %v", err)
	}
}

func TestClipScale(t *testing.T) {
	norm, s := ClipScale(4, 1) // norm 2 > 1
	if norm != 2 || s != float32(1)/(float32(2)+float32(1e-6)) {
		t.Errorf("ClipScale(4, 1) = %v, %v", norm, s)
	}
	if _, s := ClipScale(0.25, 1); s != 1 {
		t.Errorf("norm 0.5 under max 1: scale %v, want 1", s)
	}
	// At the limit torch still scales by 1/(1 + 1e-6): the clamp only caps at 1.
	if _, s := ClipScale(1, 1); s >= 1 || s != float32(1)/(float32(1)+float32(1e-6)) {
		t.Errorf("norm exactly at max: scale %v, want 1/(1+1e-6) in float32", s)
	}
	if _, s := ClipScale(100, 0); s != 1 {
		t.Error("maxNorm 0 disables clipping")
	}
	if _, s := ClipScale(math.Inf(1), 1); s != 0 {
		t.Errorf("infinite norm: scale %v, want 0 (1/(inf))", s)
	}
}
