package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/data"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// yodaConfig writes the seed's job with the model replaced by dir (which
// holds the Phi-3 tokenizer) and the data set by the shared CSV.
func yodaConfig(t *testing.T, modelDir, extra string) string {
	t.Helper()
	csv := testutil.SharedData(t, "yoda_sentences.csv")
	return writeConfig(t, "model: "+modelDir+"\ndataset:\n  path: "+csv+"\n"+extra)
}

func runData(t *testing.T, args ...string) dataReport {
	t.Helper()
	out, _, err := runCmd(t, newDataCmd(), args...)
	if err != nil {
		t.Fatal(err)
	}
	var rep dataReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out)
	}
	return rep
}

func TestDataYoda(t *testing.T) {
	clearConfigEnv(t)
	tokDir := testutil.SharedData(t, "phi3-tokenizer")
	cfgPath := yodaConfig(t, tokDir, "")
	rep := runData(t, "--config", cfgPath, "--show-batch")

	// ../shared/README.md: 720 rows, 21,801 tokens in chat format.
	if rep.Examples != 720 || rep.Tokens != 21801 {
		t.Errorf("examples %d tokens %d; want 720 and 21801", rep.Examples, rep.Tokens)
	}
	// bfd packing into 64 keeps every token (no example is longer than 64)
	// and cannot beat ceil(21801/64) = 341 full rows; batch 16, no
	// accumulation: ceil(sequences/16) steps.
	if rep.SequenceTokens != 21801 || rep.Truncated != 0 || rep.Sequences < 341 || rep.StepsPerEpoch != (rep.Sequences+15)/16 {
		t.Errorf("sequences %d holding %d tokens, %d truncated, %d steps per epoch", rep.Sequences, rep.SequenceTokens, rep.Truncated, rep.StepsPerEpoch)
	}
	if rep.TotalSteps != 10*rep.StepsPerEpoch {
		t.Errorf("total steps %d, want 10 epochs x %d", rep.TotalSteps, rep.StepsPerEpoch)
	}

	// Row 0 as Phi-3's chat template renders it, and its ids as the
	// reference lists them; the completion starts after <|assistant|>.
	ex := rep.Example
	wantText := "<|user|>\nThe birch canoe slid on the smooth planks.<|end|>\n<|assistant|>\nOn the smooth planks, the birch canoe slid. Yes, hrrrm.<|end|>\n<|endoftext|>"
	if ex == nil || ex.Text != wantText {
		t.Fatalf("example %+v, want text %q", ex, wantText)
	}
	head := []int32{32010, 450, 29773, 305, 508, 7297, 2243, 333, 373, 278, 10597, 715, 1331, 29889, 32007, 32001}
	if !slices.Equal(ex.InputIDs[:len(head)], head) || ex.InputIDs[len(ex.InputIDs)-1] != 32000 {
		t.Errorf("example ids %v", ex.InputIDs)
	}
	if len(ex.CompletionMask) != len(ex.InputIDs) || ex.CompletionMask[15] != 0 || ex.CompletionMask[16] != 1 {
		t.Errorf("completion mask %v", ex.CompletionMask)
	}
	if !strings.Contains(ex.Source, "yoda_sentences.csv") || !strings.Contains(ex.Source, "line 2") {
		t.Errorf("source %q", ex.Source)
	}

	// The first micro-batch: padding-free (one row), 16 packed sequences in
	// epoch 0's seeded order, positions restarting at every example (each
	// starts with <|user|>), prompts masked.
	b := rep.Batch
	if b == nil || len(b.InputIDs) != 1 || len(b.Labels) != 1 || len(b.PositionIDs) != 1 {
		t.Fatalf("batch %+v; want one padding-free row", b)
	}
	wantIdx := data.EpochBatches(rep.Sequences, 16, true, 42, 0)[0]
	if !slices.Equal(b.Sequences, wantIdx) {
		t.Errorf("batch sequences %v, want epoch 0's first %v", b.Sequences, wantIdx)
	}
	ids, labels, pos := b.InputIDs[0], b.Labels[0], b.PositionIDs[0]
	if len(ids) != len(labels) || len(ids) != len(pos) || len(ids) > 16*64 {
		t.Fatalf("row lengths %d/%d/%d", len(ids), len(labels), len(pos))
	}
	starts := 0
	for i := range ids {
		if (pos[i] == 0) != (ids[i] == 32010) {
			t.Fatalf("token %d: id %d at position %d; examples must start (position 0) with <|user|>", i, ids[i], pos[i])
		}
		if pos[i] == 0 {
			starts++
		} else if pos[i] != pos[i-1]+1 {
			t.Fatalf("position ids %v do not count up within an example", pos[i-1:i+1])
		}
		if labels[i] != -100 && labels[i] != ids[i] {
			t.Fatalf("label %d at %d is neither -100 nor the token %d", labels[i], i, ids[i])
		}
		if ids[i] == 32010 && labels[i] != -100 {
			t.Fatalf("prompt token %d is scored", i)
		}
	}
	if starts < 16 {
		t.Errorf("%d examples in 16 packed sequences", starts)
	}

	// Without --show-batch there is no batch.
	if rep := runData(t, "--config", cfgPath); rep.Batch != nil {
		t.Error("batch printed without --show-batch")
	}
}

// The counts are those of finetune.Plan, which --dry-run prints: the same
// pipeline.
func TestDataAgreesWithPlan(t *testing.T) {
	clearConfigEnv(t)
	dir := tinyModelWithTokenizer(t)
	cfgPath := yodaConfig(t, dir, "  eval_split: 0.1\ntraining:\n  per_device_train_batch_size: 8\n  gradient_accumulation_steps: 2\n")
	rep := runData(t, "--config", cfgPath)
	cfg, err := load(t, configSources{File: cfgPath})
	if err != nil {
		t.Fatal(err)
	}
	job, err := finetune.NewJob(context.Background(), cfg, finetune.JobOptions{})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := finetune.Plan(context.Background(), job)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Examples != plan.Data.Examples || rep.Tokens != plan.Data.Tokens || rep.Sequences != plan.Data.Sequences ||
		rep.StepsPerEpoch != plan.Data.StepsPerEpoch || rep.EvalExamples != plan.EvalExamples || rep.TotalSteps != plan.TotalSteps {
		t.Fatalf("data %+v\nplan %+v", rep, plan)
	}
	if rep.Examples != 648 || rep.EvalExamples != 72 {
		t.Errorf("eval_split 0.1 of 720: %d train, %d eval; want 648 and 72", rep.Examples, rep.EvalExamples)
	}
}

func TestDataErrors(t *testing.T) {
	clearConfigEnv(t)
	tokDir := testutil.SharedData(t, "phi3-tokenizer")
	bad := filepath.Join(t.TempDir(), "bad.csv")
	if err := os.WriteFile(bad, []byte("question,answer\nhi,there\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", yodaConfig(t, tokDir, ""), "--example", "720"}, "--example 720"},
		{[]string{"--config", yodaConfig(t, tokDir, ""), "--set", "dataset.path=" + bad}, "bad.csv"},
		{[]string{"--config", yodaConfig(t, t.TempDir(), "")}, "tokenizer"},
		{[]string{"--config", yodaConfig(t, tokDir, ""), "--set", "training.packing_strategy=tight"}, "training.packing_strategy"},
	} {
		_, _, err := runCmd(t, newDataCmd(), tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v; want one mentioning %q", tc.args, err, tc.want)
		}
	}
}
