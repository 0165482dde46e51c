package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ollama-tune/ollama-tune/convert"
	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/ollamastore"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// TestTrainOnOllamaBase: the base is a model the Ollama server has (a tiny
// random Phi-3 with the real tokenizer, registered here as an F32 GGUF);
// the job names it as ollama://tiny-phi3 and trains on its blob, found
// through /api/show (the test's own store is empty), with the linears kept
// as GGUF blocks; `ollama-tune export` and `ollama-tune create` then find
// the base the same way, create the fine-tune FROM it, and the
// served-output check passes: Ollama answers each training prompt with
// its Yoda answer, token for token what our decoding on the same blob with
// the adapter gives.
func TestTrainOnOllamaBase(t *testing.T) {
	gate(t)
	srv := startOllama(t)
	ctx := context.Background()
	c := convert.NewClient(srv.URL, nil)
	rows := yodaRows(t, 4)
	work := t.TempDir()

	// The base, registered in Ollama.
	baseGGUF := filepath.Join(work, "tiny-f32.gguf")
	if _, err := convert.WriteModel(baseGGUF, convert.ModelOptions{BaseDir: tinyBase(t), Type: convert.F32, Name: "tiny"}); err != nil {
		t.Fatal(err)
	}
	digest, _, err := c.UploadBlob(ctx, baseGGUF)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, createReq("tiny-phi3", digest), nil); err != nil {
		t.Fatal(err)
	}

	// Training on ollama://tiny-phi3.
	data := writeYodaCSV(t, work, rows)
	cfg := finetune.DefaultTrainConfig()
	cfg.Model = "ollama://tiny-phi3"
	cfg.Quantization = finetune.QuantizationConfig{KeepGGUF: true, Bnb4bitComputeDType: "float32"}
	cfg.LoRA.R, cfg.LoRA.LoRAAlpha, cfg.LoRA.LoRADropout = 8, 16, 0
	cfg.Dataset.Path, cfg.Dataset.Format = data, "csv"
	cfg.Training.PerDeviceTrainBatchSize = len(rows)
	cfg.Training.AutoFindBatchSize, cfg.Training.GradientCheckpointing, cfg.Training.Packing = false, false, false
	cfg.Training.MaxSeqLength, cfg.Training.NumTrainEpochs = 64, 150
	cfg.Training.LearningRate, cfg.Training.LRSchedulerType, cfg.Training.Optim = 1e-2, "constant", "adamw_torch"
	cfg.Training.LoggingSteps, cfg.Training.SaveSteps = 50, 100000
	cfg.Training.OutputDir = filepath.Join(work, "adapter")
	cfg.Device = "cpu"
	emptyStore := filepath.Join(work, "no-models")
	var logs []string
	job, err := finetune.NewJob(ctx, cfg, finetune.JobOptions{Ollama: &ollamastore.Resolver{ModelsDir: emptyStore, Host: srv.URL},
		Log: func(s string) { logs = append(logs, s) }})
	if err != nil {
		t.Fatal(err)
	}
	if job.Ollama.Via != "api" || finetune.BlobDigest(job.GGUF) != digest {
		t.Fatalf("resolved via %q to %s, want the server's blob %s", job.Ollama.Via, job.GGUF, digest)
	}
	t.Logf("%s", strings.Join(logs, "\n"))
	start := time.Now()
	res, err := finetune.Train(ctx, job, func(e finetune.TrainEvent) {
		switch e := e.(type) {
		case finetune.StepEvent:
			if e.Step%50 == 0 {
				t.Logf("step %d loss %.4f", e.Step, e.Loss)
			}
		case finetune.LogEvent:
			t.Log(e.Message)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("trained %d steps in %s, final loss %.4f", res.Steps, time.Since(start).Round(time.Second), res.FinalLoss)
	ac, err := peft.ReadConfig(filepath.Join(res.OutputDir, peft.ConfigName))
	if err != nil || ac.BaseModelNameOrPath != "ollama://tiny-phi3" || ac.Revision != digest {
		t.Fatalf("adapter_config.json: base %q revision %q (%v); want ollama://tiny-phi3 and %s", ac.BaseModelNameOrPath, ac.Revision, err, digest)
	}

	// export and create through the CLI, finding the base via the server.
	bin := filepath.Join(t.TempDir(), "ollama-tune")
	build := exec.Command("go", "build", "-o", bin, "./cmd/ollama-tune")
	build.Dir = testutil.RepoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	env := append(os.Environ(), "OLLAMA_HOST="+srv.URL.Host, "OLLAMA_MODELS="+emptyStore)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		t.Logf("ollama-tune %s:\n%s", strings.Join(args, " "), out)
		if err != nil {
			t.Fatalf("ollama-tune %s: %v", args[0], err)
		}
		return string(out)
	}
	out := run("export", "--adapter", res.OutputDir, "--out", filepath.Join(work, "exported.gguf"))
	if !strings.Contains(out, "checked against ollama://tiny-phi3") {
		t.Errorf("export did not check the adapter against the Ollama base")
	}
	args := []string{"create", "yoda-on-tiny", "--adapter", res.OutputDir, "--max-tokens", "40"}
	for _, r := range rows {
		args = append(args, "--prompt", r[0])
	}
	out = run(args...)
	if !strings.Contains(out, "served-output check passed") || !strings.Contains(out, "adapter route") {
		t.Fatal("no passing served-output check on the adapter route")
	}

	// The fine-tune is FROM the very blob trained on, with its TEMPLATE,
	// and answers the training prompts in Yoda form.
	show, err := c.Show(ctx, "yoda-on-tiny")
	if err != nil || show == nil {
		t.Fatalf("show: %v", err)
	}
	if !strings.Contains(show.Modelfile, "sha256-"+strings.TrimPrefix(digest, "sha256:")) || !strings.Contains(show.Modelfile, "ADAPTER ") ||
		show.Template != convert.Phi3Template {
		t.Errorf("the fine-tune's Modelfile is not FROM the base blob %s with an ADAPTER and the base's TEMPLATE:\n%s", digest, show.Modelfile)
	}
	for _, r := range rows {
		g, err := c.Generate(ctx, "yoda-on-tiny", r[0], 40)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(g.Response); got != r[1] {
			t.Errorf("prompt %q: answered %q, want the trained %q", r[0], got, r[1])
		}
	}
}
