// Package integration holds end-to-end tests against a real Ollama server
// (v0.24.0, built from the Go module proxy by build-ollama.sh). They run
// only with OLLAMA_TUNE_INTEGRATION=1, so the fast `go test ./...` skips
// them; `make test` (via .ci/run) sets it.
package integration

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ollama/ollama/api"

	"github.com/ollama-tune/ollama-tune/convert"
	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
	"github.com/ollama-tune/ollama-tune/finetune/testutil/tinymodel"
)

func gate(t *testing.T) {
	t.Helper()
	if os.Getenv("OLLAMA_TUNE_INTEGRATION") != "1" {
		t.Skip("set OLLAMA_TUNE_INTEGRATION=1 to run the end-to-end tests against a real Ollama")
	}
}

// ollamaBinary builds (or finds in the cache) Ollama v0.24.0.
func ollamaBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("OLLAMA_TUNE_OLLAMA_BIN"); p != "" {
		return p
	}
	root := testutil.RepoRoot(t)
	cmd := exec.Command("bash", filepath.Join(root, "integration", "build-ollama.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("build-ollama.sh: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// server is a running `ollama serve` on 127.0.0.1 with its own model store.
type server struct {
	URL *url.URL
	log *bytes.Buffer
}

func startOllama(t *testing.T) *server {
	t.Helper()
	bin := ollamaBinary(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	home := t.TempDir()
	cmd := exec.Command(bin, "serve")
	cmd.Env = append(os.Environ(),
		"OLLAMA_HOST="+addr,
		"OLLAMA_MODELS="+filepath.Join(home, "models"),
		"HOME="+home,
		"OLLAMA_NOPRUNE=1",
		"OLLAMA_KEEP_ALIVE=10m",
		"OLLAMA_NUM_PARALLEL=1",
		"OLLAMA_DEBUG=1",
	)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{URL: &url.URL{Scheme: "http", Host: addr}, log: &log}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("ollama serve log (last 6000 bytes):\n%s", tail(log.String(), 6000))
		}
	})
	c := convert.NewClient(s.URL, nil)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		v, err := c.Version(ctx)
		cancel()
		if err == nil {
			t.Logf("ollama %s serving on %s", v, addr)
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("ollama serve did not answer: %v\n%s", err, log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// yodaRows are the first n rows of the shared Yoda data set.
func yodaRows(t *testing.T, n int) [][2]string {
	t.Helper()
	var out [][2]string
	for _, r := range testutil.YodaRows(t)[:n] {
		out = append(out, [2]string{r[0], r[2]}) // sentence, translation_extra (the seed's completion)
	}
	return out
}

// tinyBase writes a small random Phi-3 with the real Phi-3 tokenizer.
func tinyBase(t *testing.T) string {
	t.Helper()
	cfg := &finetune.Config{Architecture: "Phi3ForCausalLM", ModelType: "phi3",
		HiddenSize: 128, IntermediateSize: 256, NumLayers: 2, NumHeads: 4, NumKVHeads: 4, VocabSize: 32064,
		RMSNormEps: 1e-5, RopeTheta: 10000, PartialRotaryFactor: 1, MaxPositionEmbeddings: 4096,
		HiddenAct: "silu", TorchDType: "float32", BOSTokenID: 1, EOSTokenIDs: []int{32000, 32007}, PadTokenID: 32000}
	return tinymodel.Dir(t, cfg, 11, finetune.F32)
}

// writeYodaCSV writes rows as a Yoda-style CSV (sentence, translation,
// translation_extra) in dir and returns its path.
func writeYodaCSV(t *testing.T, dir string, rows [][2]string) string {
	t.Helper()
	var b strings.Builder
	w := csv.NewWriter(&b)
	w.Write([]string{"sentence", "translation", "translation_extra"})
	for _, r := range rows {
		w.Write([]string{r[0], r[1], r[1]})
	}
	w.Flush()
	path := filepath.Join(dir, "yoda.csv")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// trainAdapter fine-tunes the tiny base on rows with our trainer (dense
// base, AdamW) until it reproduces them.
func trainAdapter(t *testing.T, base string, rows [][2]string) string {
	t.Helper()
	work := t.TempDir()
	data := writeYodaCSV(t, work, rows)
	cfg := finetune.DefaultTrainConfig()
	cfg.Model = base
	cfg.Quantization = finetune.QuantizationConfig{Bnb4bitComputeDType: "float32"}
	cfg.LoRA.R, cfg.LoRA.LoRAAlpha, cfg.LoRA.LoRADropout = 8, 16, 0
	cfg.Dataset.Path = data
	cfg.Dataset.Format = "csv"
	cfg.Training.PerDeviceTrainBatchSize = len(rows)
	cfg.Training.AutoFindBatchSize = false
	cfg.Training.GradientCheckpointing = false
	cfg.Training.Packing = false
	cfg.Training.MaxSeqLength = 64
	cfg.Training.NumTrainEpochs = 300
	cfg.Training.LearningRate = 1e-2
	cfg.Training.LRSchedulerType = "constant"
	cfg.Training.Optim = "adamw_torch"
	cfg.Training.LoggingSteps = 50
	cfg.Training.SaveSteps = 100000
	cfg.Training.OutputDir = filepath.Join(work, "adapter")
	cfg.Device = "cpu"
	ctx := context.Background()
	job, err := finetune.NewJob(ctx, cfg, finetune.JobOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := finetune.Train(ctx, job, func(e finetune.TrainEvent) {
		if s, ok := e.(finetune.StepEvent); ok && s.Step%50 == 0 {
			t.Logf("step %d loss %.4f", s.Step, s.Loss)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("trained %d steps, final loss %.4f, %s", res.Steps, res.FinalLoss, res.Runtime)
	return res.OutputDir
}

// TestOllamaEndToEnd: a tiny Phi-3 trained on a few Yoda rows, served by a
// real Ollama v0.24.0 through both routes.
func TestOllamaEndToEnd(t *testing.T) {
	gate(t)
	srv := startOllama(t)
	ctx := context.Background()
	c := convert.NewClient(srv.URL, nil)
	rows := yodaRows(t, 4)
	base := tinyBase(t)
	adapter := trainAdapter(t, base, rows)
	out := t.TempDir()

	baseGGUF := filepath.Join(out, "base-f32.gguf")
	if _, err := convert.WriteModel(baseGGUF, convert.ModelOptions{BaseDir: base, Type: convert.F32, Name: "tiny"}); err != nil {
		t.Fatal(err)
	}
	var prompts []string
	for _, r := range rows {
		prompts = append(prompts, r[0])
	}
	var log bytes.Buffer
	defer func() { t.Logf("create log:\n%s", log.String()) }()

	// (a) adapter route: Ollama's answers equal our generate's, token for
	// token, and a training prompt gets its Yoda answer.
	ar, err := convert.Create(ctx, c, convert.CreateOptions{Name: "yoda-tiny", AdapterDir: adapter, Base: baseGGUF,
		BaseWeights: base, AdapterDType: convert.F32, OutDir: filepath.Join(out, "adapter-route"), Prompts: prompts, MaxTokens: 40, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if ar.Route != convert.RouteAdapter {
		t.Fatalf("route %s for Ollama %s, want adapter", ar.Route, ar.Version)
	}
	ar.Check.Print(&log)
	if !ar.Check.OK() {
		t.Fatalf("adapter route: served-output check failed")
	}
	for i, r := range ar.Check.Results {
		// (e) the prompt ids Ollama used are the ids training used.
		if r.ServedIDs == nil || !r.PromptParity {
			t.Errorf("prompt %d: served ids %v, training ids %v", i, r.ServedIDs, r.PromptIDs)
		}
		// The whole served sequence (prompt + answer, re-tokenized by
		// llama.cpp) is the training prompt followed by the ids our greedy
		// decoding produced.
		want := append(slices.Clone(r.PromptIDs), r.WantIDs...)
		if len(r.ServedIDs) != len(want) {
			t.Errorf("prompt %d: served sequence %v, want %v", i, r.ServedIDs, want)
		} else {
			for j := range want {
				if r.ServedIDs[j] != int(want[j]) {
					t.Errorf("prompt %d: served sequence %v, want %v (first difference at %d)", i, r.ServedIDs, want, j)
					break
				}
			}
		}
		if got := strings.TrimSpace(r.Got); got != rows[i][1] {
			t.Errorf("prompt %q: Ollama answered %q, want the trained Yoda answer %q", r.Prompt, got, rows[i][1])
		}
	}

	// (b) the base alone answers differently.
	digest, _, err := c.UploadBlob(ctx, baseGGUF)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, createReq("base-tiny", digest), nil); err != nil {
		t.Fatal(err)
	}
	for i, p := range prompts {
		g, err := c.Generate(ctx, "base-tiny", p, 40)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(g.Response) == strings.TrimSpace(ar.Check.Results[i].Got) {
			t.Errorf("prompt %q: the base without the adapter gives the adapter's answer %q", p, g.Response)
		}
	}

	// (c) merged route: same answers as the adapter route.
	mr, err := convert.Create(ctx, c, convert.CreateOptions{Name: "yoda-tiny-merged", AdapterDir: adapter, Base: base,
		Route: convert.RouteMerged, Quant: convert.F32, OutDir: filepath.Join(out, "merged-route"), Prompts: prompts, MaxTokens: 40, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	mr.Check.Print(&log)
	if !mr.Check.OK() {
		t.Fatalf("merged route: served-output check failed")
	}
	for i := range prompts {
		if a, m := ar.Check.Results[i].Got, mr.Check.Results[i].Got; a != m {
			t.Errorf("prompt %q: adapter route %q, merged route %q", prompts[i], a, m)
		}
	}
	// A quantized merged model loads and answers too.
	q, err := convert.Create(ctx, c, convert.CreateOptions{Name: "yoda-tiny-q8", AdapterDir: adapter, Base: base,
		Route: convert.RouteMerged, Quant: convert.Q8_0, OutDir: filepath.Join(out, "merged-q8"), Prompts: prompts[:1], MaxTokens: 40, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	q.Check.Print(&log)

	// (d) a corrupted adapter is refused by our create before Ollama sees it.
	bad := filepath.Join(t.TempDir(), "bad")
	if err := os.CopyFS(bad, os.DirFS(adapter)); err != nil {
		t.Fatal(err)
	}
	a, err := peft.Read(adapter, nil)
	if err != nil {
		t.Fatal(err)
	}
	a.Tensors = slices.DeleteFunc(a.Tensors, func(x peft.Tensor) bool { return strings.Contains(x.Name, "layers.1.mlp.down_proj.lora_B") })
	var buf bytes.Buffer
	if err := a.EncodeWeights(&buf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bad, peft.WeightsName), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = convert.Create(ctx, c, convert.CreateOptions{Name: "yoda-bad", AdapterDir: bad, Base: baseGGUF, BaseWeights: base, OutDir: filepath.Join(out, "bad"), Log: &log})
	if err == nil || !strings.Contains(err.Error(), "lora_B") {
		t.Fatalf("corrupted adapter: error %v, want one about the missing lora_B", err)
	}
	if s, err := c.Show(ctx, "yoda-bad"); err != nil || s != nil {
		t.Fatalf("the corrupted adapter reached Ollama: show = %v, %v", s, err)
	}
	fmt.Fprintln(&log, "corrupted adapter refused:", err)
}

// createReq creates a model from one GGUF blob with the Phi-3 template.
func createReq(name, digest string) *api.CreateRequest {
	return &api.CreateRequest{Model: name, Files: map[string]string{"model.gguf": digest},
		Template: convert.Phi3Template, Parameters: map[string]any{"stop": convert.Phi3Stops}}
}

// TestYodaDemoEndToEnd runs `ollama-tune yoda --demo` against the server:
// it trains, creates yoda-demo and passes the served-output check, and the
// model answers a demo prompt in Yoda form with the Modelfile's own
// settings (what `ollama run yoda-demo` does).
func TestYodaDemoEndToEnd(t *testing.T) {
	gate(t)
	srv := startOllama(t)
	bin := filepath.Join(t.TempDir(), "ollama-tune")
	build := exec.Command("go", "build", "-o", bin, "./cmd/ollama-tune")
	build.Dir = testutil.RepoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "yoda", "--demo", "--out", filepath.Join(t.TempDir(), "demo"))
	cmd.Env = append(os.Environ(), "OLLAMA_HOST="+srv.URL.Host)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("yoda --demo in %s:\n%s", time.Since(start).Round(time.Second), out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "served-output check passed") {
		t.Fatal("no passing served-output check in the output")
	}
	stream := false
	var got string
	err = convert.NewClient(srv.URL, nil).API.Generate(context.Background(), &api.GenerateRequest{Model: "yoda-demo", Prompt: "Fear leads to anger.", Stream: &stream},
		func(r api.GenerateResponse) error { got += r.Response; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(got) != "To anger, fear leads." {
		t.Errorf("yoda-demo with its Modelfile settings answered %q, want %q", got, "To anger, fear leads.")
	}
}
