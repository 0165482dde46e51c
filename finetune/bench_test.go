package finetune

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
)

// CPU training-step benchmarks: one forward + backward of a QLoRA Phi-3
// (NF4 + double quant base, LoRA r=8 on all four linears) on 2 x 64
// tokens. `make bench` runs them;
//
//	go test -run TestPrintBenchTable ./finetune/ -args -benchtable
//
// prints the table recorded in BENCHMARKS.md.

var benchTable = flag.Bool("benchtable", false, "TestPrintBenchTable: run the CPU benchmarks and print a table")

type benchCase struct {
	name  string
	cfg   *Config
	B, S  int
	ckpt  bool
	short bool // small enough for -short runs
}

func benchCases() []benchCase {
	tiny := &Config{Architecture: "Phi3ForCausalLM", ModelType: "phi3",
		HiddenSize: 64, IntermediateSize: 96, NumLayers: 2, NumHeads: 4, NumKVHeads: 2, VocabSize: 256,
		RMSNormEps: 1e-5, RopeTheta: 10000, PartialRotaryFactor: 1, HiddenAct: "silu", PadTokenID: -1}
	mid := &Config{Architecture: "Phi3ForCausalLM", ModelType: "phi3",
		HiddenSize: 512, IntermediateSize: 1376, NumLayers: 8, NumHeads: 8, NumKVHeads: 8, VocabSize: 32064,
		RMSNormEps: 1e-5, RopeTheta: 10000, PartialRotaryFactor: 1, HiddenAct: "silu", PadTokenID: -1}
	return []benchCase{
		{name: "tiny", cfg: tiny, B: 2, S: 64, short: true},
		{name: "mid", cfg: mid, B: 2, S: 64},
		{name: "mid-checkpointing", cfg: mid, B: 2, S: 64, ckpt: true},
	}
}

// benchModel builds the case's random QLoRA model and a batch whose every
// token is a target.
func benchModel(tb testing.TB, c benchCase) (*Model, *Batch) {
	tb.Helper()
	w := randomWeights(c.cfg, 3)
	m, err := NewModel(NewCPUBackend(CPUOptions{}), c.cfg, weightGetter(c.cfg, w), ModelOptions{
		Quantize: true, DoubleQuant: true, GradientCheckpointing: c.ckpt,
		LoRA: &LoRAConfig{R: 8, Alpha: 16, Dropout: 0.05, TargetModules: []string{"all-linear"}, Seed: 1},
	})
	if err != nil {
		tb.Fatal(err)
	}
	T := c.B * c.S
	batch := &Batch{B: c.B, S: c.S, InputIDs: make([]int32, T), PositionIDs: make([]int32, T), Labels: make([]int32, T)}
	for t := range T {
		id := int32(Mix64(uint64(t)) % uint64(c.cfg.VocabSize))
		batch.InputIDs[t], batch.Labels[t], batch.PositionIDs[t] = id, id, int32(t%c.S)
	}
	return m, batch
}

func runBenchCase(b *testing.B, c benchCase) {
	m, batch := benchModel(b, c)
	defer m.Free()
	step := func(n int) {
		m.ZeroGrads()
		if _, _, _, err := m.Forward(batch, true, uint64(n)); err != nil {
			b.Fatal(err)
		}
		if err := m.Backward(); err != nil {
			b.Fatal(err)
		}
	}
	step(0) // allocate the activation buffers outside the timing
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		step(n + 1)
	}
	b.ReportMetric(float64(batch.B*batch.S*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

func BenchmarkForwardBackward(b *testing.B) {
	for _, c := range benchCases() {
		b.Run(c.name, func(b *testing.B) { runBenchCase(b, c) })
	}
}

// TestPrintBenchTable prints the benchmark table (only with -benchtable).
func TestPrintBenchTable(t *testing.T) {
	if !*benchTable {
		t.Skip("print the CPU benchmark table with: go test -run TestPrintBenchTable ./finetune/ -args -benchtable")
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "| config | base params | tokens/step | ms/step | tokens/s |\n|---|---:|---:|---:|---:|\n")
	for _, c := range benchCases() {
		r := testing.Benchmark(func(b *testing.B) { runBenchCase(b, c) })
		fmt.Fprintf(&sb, "| %s | %d | %d | %.1f | %.1f |\n", c.name, baseParams(c.cfg), c.B*c.S,
			float64(r.NsPerOp())/1e6, r.Extra["tokens/s"])
	}
	fmt.Fprintf(os.Stdout, "CPU forward+backward, NF4 base + LoRA r=8 all-linear, dropout 0.05, %s/%s, GOMAXPROCS %d, %d CPUs\n\n%s",
		runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), runtime.NumCPU(), sb.String())
}

// baseParams counts a config's base weights.
func baseParams(c *Config) int64 {
	C, I, V := int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.VocabSize)
	layer := C*int64(c.QKVOut()) + C*C + 2*I*C + I*C + 2*C
	return 2*V*C + C + int64(c.NumLayers)*layer
}

// BenchmarkMatmul measures the two kernels every linear layer runs
// (x.W^T forward, dout.W backward) on a Phi-3-mid-sized qkv_proj, dense
// and NF4, on all CPUs.
func BenchmarkMatmul(b *testing.B) {
	T, O, I := 128, 1536, 512
	x, w, d := randn(T*I, 1, 1), randn(O*I, 2, 1), randn(T*O, 3, 1)
	be := NewCPUBackend(CPUOptions{})
	dense, _ := be.DenseWeight(w, O, I)
	q, _ := be.NF4Weight(w, O, I, true)
	out, dx := make([]float32, T*O), make([]float32, T*I)
	for _, c := range []struct {
		name string
		run  func()
	}{
		{"forward-dense", func() { be.matmulWT(out, x, T, cpuW(dense), 1, false) }},
		{"forward-nf4", func() { be.matmulWT(out, x, T, cpuW(q), 1, false) }},
		{"backward-dense", func() { be.matmulW(dx, d, T, cpuW(dense), 1) }},
		{"backward-nf4", func() { be.matmulW(dx, d, T, cpuW(q), 1) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			for n := 0; n < b.N; n++ {
				c.run()
			}
			b.ReportMetric(float64(2*T*O*I)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOPS")
		})
	}
}
