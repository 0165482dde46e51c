package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// The expected output is written by hand from what the seed prints for
// Phi-3-mini in 4-bit with LoRA r=8 on the four fused modules:
// print(model) under transformers 4.56 / peft (lora.Linear4bit wrappers),
// peft's print_trainable_parameters ("trainable params: 12,582,912 || all
// params: 3,833,662,464 || trainable%: 0.3282") and get_memory_footprint
// (2,206,341,312 bytes after the 4-bit load, 2,651.07 MB after LoRA, from
// ../shared/README.md).
func TestInspectPhi3Mini(t *testing.T) {
	clearConfigEnv(t)
	want, err := os.ReadFile(filepath.Join("testdata", "inspect_phi3_mini.txt"))
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := runCmd(t, newInspectCmd(), "--model", filepath.Join("testdata", "phi3-mini-4k-instruct"))
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatalf("inspect output differs from testdata/inspect_phi3_mini.txt at line %d:\n%s", firstDiffLine(got, string(want)), got)
	}

	// transformers 5's config.json dialect describes the same model.
	dir := t.TempDir()
	testutil.CopyFile(t, filepath.Join(testutil.RepoRoot(t), "finetune", "testdata", "configs", "tf5_phi3_mini.json"), filepath.Join(dir, "config.json"))
	got, _, err = runCmd(t, newInspectCmd(), "--model", dir)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatalf("tf5 config: output differs at line %d", firstDiffLine(got, string(want)))
	}
}

func firstDiffLine(a, b string) int {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range min(len(al), len(bl)) {
		if al[i] != bl[i] {
			return i + 1
		}
	}
	return min(len(al), len(bl)) + 1
}

func TestInspectVariants(t *testing.T) {
	clearConfigEnv(t)
	model := filepath.Join("testdata", "phi3-mini-4k-instruct")
	for _, tc := range []struct {
		name      string
		args      []string
		want, not []string
	}{
		{"one target", []string{"--set", "lora.target_modules=qkv_proj"},
			[]string{"(o_proj): Linear4bit(in_features=3072, out_features=3072, bias=False)\n", "(qkv_proj): lora.Linear4bit(",
				// 32 layers x 8 x (3072 + 9216)
				"trainable params: 3,145,728 || all params: 3,824,225,280 || trainable%: 0.0823\n"},
			[]string{"(down_proj): lora."}},
		{"no dropout", []string{"--set", "lora.lora_dropout=0"},
			[]string{"(default): Identity()\n"}, []string{"Dropout(p=0.05"}},
		{"not quantized", []string{"--set", "quantization.load_in_4bit=false", "--set", "lora.r=16"},
			[]string{"(o_proj): lora.Linear(\n", "(base_layer): Linear(in_features=3072, out_features=3072, bias=False)",
				"(default): Linear(in_features=3072, out_features=16, bias=False)",
				"trainable params: 25,165,824 || all params: 3,846,245,376 || trainable%: 0.6543\n",
				// fp32: 3,821,079,552 x 4 + 48 x 4 (inv_freq), then + LoRA x 4
				"memory footprint after the load (float32): 15,284,318,400 bytes",
				"memory footprint with LoRA: 15,384,981,696 bytes"},
			[]string{"Linear4bit"}},
		{"base", []string{"--base"},
			[]string{"Phi3ForCausalLM(\n  (model): Phi3Model(\n", "(o_proj): Linear4bit(in_features=3072, out_features=3072, bias=False)\n",
				"trainable params: 0 || all params: 3,821,079,552 || trainable%: 0.0000\n"},
			[]string{"PeftModelForCausalLM", "lora", "after prepare_model_for_kbit_training"}},
	} {
		got, _, err := runCmd(t, newInspectCmd(), append([]string{"--model", model}, tc.args...)...)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: output lacks %q", tc.name, w)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(got, n) {
				t.Errorf("%s: output has %q", tc.name, n)
			}
		}
	}
}

func TestInspectErrors(t *testing.T) {
	clearConfigEnv(t)
	if _, _, err := runCmd(t, newInspectCmd(), "--model", t.TempDir()); err == nil || !strings.Contains(err.Error(), "config.json") {
		t.Errorf("no config.json: error %v", err)
	}
	model := filepath.Join("testdata", "phi3-mini-4k-instruct")
	if _, _, err := runCmd(t, newInspectCmd(), "--model", model, "--set", "lora.target_modules=q_proj"); err == nil || !strings.Contains(err.Error(), "q_proj") {
		t.Errorf("bad target: error %v", err)
	}
}

func TestCommas(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 12582912: "12,582,912", -1234567: "-1,234,567"} {
		if got := commas(n); got != want {
			t.Errorf("commas(%d) = %q, want %q", n, got, want)
		}
	}
}
