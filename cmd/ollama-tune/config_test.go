package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// writeConfig writes a YAML config into a temp dir and returns its path.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "job.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// clearConfigEnv removes OLLAMA_TUNE_* variables that would set config keys,
// so the developer's environment cannot change a test's result.
func clearConfigEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, envPrefix) {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
}

func load(t *testing.T, src configSources) (finetune.TrainConfig, error) {
	t.Helper()
	src.Environ = os.Environ()
	return loadTrainConfig(src)
}

func TestConfigDefaults(t *testing.T) {
	clearConfigEnv(t)
	cfg, err := load(t, configSources{})
	if err != nil {
		t.Fatal(err)
	}
	if want := finetune.DefaultTrainConfig(); !reflect.DeepEqual(cfg, want) {
		t.Fatalf("no sources:\n got %+v\nwant %+v", cfg, want)
	}
}

// examples/yoda.yaml is the seed's job, which is also DefaultTrainConfig.
func TestConfigYodaExample(t *testing.T) {
	clearConfigEnv(t)
	p := filepath.Join(testutil.RepoRoot(t), "examples", "yoda.yaml")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("%s: %v", p, err)
	}
	cfg, err := load(t, configSources{File: p})
	if err != nil {
		t.Fatal(err)
	}
	if want := finetune.DefaultTrainConfig(); !reflect.DeepEqual(cfg, want) {
		t.Fatalf("%s:\n got %+v\nwant %+v", p, cfg, want)
	}
}

func TestConfigFileOverridesDefaults(t *testing.T) {
	clearConfigEnv(t)
	p := writeConfig(t, `
model: ./tiny
lora:
  r: 16
  target_modules: [qkv_proj]
dataset:
  path: data.csv
  rename: {Sentence: prompt}
training:
  learning_rate: 2.0e-4
  completion_only_loss: false
  tf32: true
`)
	cfg, err := load(t, configSources{File: p})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Model != "./tiny" || cfg.LoRA.R != 16 || cfg.Training.LearningRate != 2e-4 {
		t.Errorf("model %q r %d lr %g; want ./tiny 16 2e-4", cfg.Model, cfg.LoRA.R, cfg.Training.LearningRate)
	}
	// A list replaces the default list; it is not merged element by element.
	if !reflect.DeepEqual(cfg.LoRA.TargetModules, []string{"qkv_proj"}) {
		t.Errorf("target_modules %v, want [qkv_proj]", cfg.LoRA.TargetModules)
	}
	// A map replaces the default mapping, and column names keep their case.
	if !reflect.DeepEqual(cfg.Dataset.Rename, map[string]string{"Sentence": "prompt"}) {
		t.Errorf("rename %v, want map[Sentence:prompt]", cfg.Dataset.Rename)
	}
	if c := cfg.Training.CompletionOnlyLoss; c == nil || *c {
		t.Errorf("completion_only_loss %v, want false", c)
	}
	if c := cfg.Training.TF32; c == nil || !*c {
		t.Errorf("tf32 %v, want true", c)
	}
	// Keys the file does not name keep their defaults.
	def := finetune.DefaultTrainConfig()
	if cfg.Training.Optim != def.Training.Optim || cfg.LoRA.LoRAAlpha != def.LoRA.LoRAAlpha || !reflect.DeepEqual(cfg.Dataset.Remove, def.Dataset.Remove) {
		t.Errorf("unset keys changed: optim %q alpha %g remove %v", cfg.Training.Optim, cfg.LoRA.LoRAAlpha, cfg.Dataset.Remove)
	}
}

func TestConfigEmptyMapClearsDefault(t *testing.T) {
	clearConfigEnv(t)
	p := writeConfig(t, "dataset:\n  rename: {}\n  remove: []\n")
	cfg, err := load(t, configSources{File: p})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Dataset.Rename) != 0 || len(cfg.Dataset.Remove) != 0 {
		t.Fatalf("rename %v remove %v; want both empty", cfg.Dataset.Rename, cfg.Dataset.Remove)
	}
}

func TestConfigTypoIsAnError(t *testing.T) {
	clearConfigEnv(t)
	for _, tc := range []struct{ yaml, want string }{
		{"training:\n  learnin_rate: 1e-4\n", `unknown key "training.learnin_rate"; did you mean "training.learning_rate"?`},
		{"training:\n  r: 4\n", `unknown key "training.r"; did you mean "lora.r"?`},
		{"lora:\n  rank: 4\n", `unknown key "lora.rank"`},
		{"trainig:\n  seed: 1\n", `unknown key "trainig.seed"`},
		{"training: 5\n", `key "training" is a group of settings`},
	} {
		p := writeConfig(t, tc.yaml)
		_, err := load(t, configSources{File: p})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%q: error %v; want it to name the file and say %s", tc.yaml, err, tc.want)
		}
	}
}

func TestConfigEnvOverridesFile(t *testing.T) {
	clearConfigEnv(t)
	p := writeConfig(t, "training:\n  learning_rate: 2.0e-4\n  seed: 7\n")
	t.Setenv("OLLAMA_TUNE_TRAINING_LEARNING_RATE", "1e-4")
	t.Setenv("OLLAMA_TUNE_LORA_TARGET_MODULES", "qkv_proj,o_proj")
	t.Setenv("OLLAMA_TUNE_TRAINING_PACKING", "false")
	t.Setenv("OLLAMA_TUNE_DATASET_RENAME", "Sentence=prompt,Translation=completion")
	t.Setenv("OLLAMA_TUNE_PLUGINS", "/nowhere") // not a config key: ignored
	cfg, err := load(t, configSources{File: p})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Training.LearningRate != 1e-4 {
		t.Errorf("learning_rate %g, want the environment's 1e-4", cfg.Training.LearningRate)
	}
	if cfg.Training.Seed != 7 {
		t.Errorf("seed %d, want the file's 7", cfg.Training.Seed)
	}
	if cfg.Training.Packing {
		t.Error("packing true, want the environment's false")
	}
	if !reflect.DeepEqual(cfg.LoRA.TargetModules, []string{"qkv_proj", "o_proj"}) {
		t.Errorf("target_modules %v", cfg.LoRA.TargetModules)
	}
	if !reflect.DeepEqual(cfg.Dataset.Rename, map[string]string{"Sentence": "prompt", "Translation": "completion"}) {
		t.Errorf("rename %v", cfg.Dataset.Rename)
	}
}

func TestConfigEnvTypo(t *testing.T) {
	clearConfigEnv(t)
	t.Setenv("OLLAMA_TUNE_TRAINING_LEARNIN_RATE", "1e-4")
	_, err := load(t, configSources{})
	if err == nil || !strings.Contains(err.Error(), "OLLAMA_TUNE_TRAINING_LEARNIN_RATE names no config key") ||
		!strings.Contains(err.Error(), "OLLAMA_TUNE_TRAINING_LEARNING_RATE") {
		t.Fatalf("error %v; want it to name the variable and the right one", err)
	}
}

func TestConfigFlagsOverrideEnv(t *testing.T) {
	clearConfigEnv(t)
	p := writeConfig(t, "training:\n  learning_rate: 2.0e-4\n  output_dir: from-file\n")
	t.Setenv("OLLAMA_TUNE_TRAINING_LEARNING_RATE", "1e-4")
	t.Setenv("OLLAMA_TUNE_TRAINING_OUTPUT_DIR", "from-env")
	t.Setenv("OLLAMA_TUNE_DEVICE", "cuda")
	cfg, err := load(t, configSources{
		File: p,
		Sets: []string{"training.learning_rate=5e-5", "training.output_dir=from-set", "dataset.rename.Sentence=prompt"},
		// A named flag (--output-dir) wins over --set.
		Flags: map[string]string{"training.output_dir": "from-flag", "training.max_steps": "3"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Training.LearningRate != 5e-5 || cfg.Training.OutputDir != "from-flag" || cfg.Training.MaxSteps != 3 {
		t.Errorf("lr %g output_dir %q max_steps %d; want 5e-5, from-flag, 3", cfg.Training.LearningRate, cfg.Training.OutputDir, cfg.Training.MaxSteps)
	}
	if cfg.Device != "cuda" {
		t.Errorf("device %q, want the environment's cuda", cfg.Device)
	}
	// A --set entry of a map adds to the mapping of the lower layers.
	want := map[string]string{"sentence": "prompt", "translation_extra": "completion", "Sentence": "prompt"}
	if !reflect.DeepEqual(cfg.Dataset.Rename, want) {
		t.Errorf("rename %v, want %v", cfg.Dataset.Rename, want)
	}
}

func TestConfigSetErrors(t *testing.T) {
	clearConfigEnv(t)
	for _, tc := range []struct {
		set  string
		want []string
	}{
		{"training.learning_rte=1", []string{`unknown key "training.learning_rte"`, `"training.learning_rate"`}},
		{"nokey", []string{"want key=value"}},
		{"training.learning_rate=fast", []string{"training.learning_rate", "fast"}},
		{"training.optim=sgd", []string{`config key "training.optim"`, `"sgd" is not allowed`, `"adamw_torch", "adamw_8bit", "paged_adamw_8bit"`}},
		{"device=tpu", []string{`config key "device"`, `"auto", "cpu", "cuda"`}},
		{"lora.r=0", []string{`config key "lora.r"`, "positive integer"}},
	} {
		_, err := load(t, configSources{Sets: []string{tc.set}})
		if err == nil {
			t.Errorf("--set %s: no error", tc.set)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("--set %s: error %q does not contain %q", tc.set, err, w)
			}
		}
	}
}

func TestConfigFileBadValue(t *testing.T) {
	clearConfigEnv(t)
	p := writeConfig(t, "training:\n  per_device_train_batch_size: many\n  lr_scheduler_type: cosine_annealing\n")
	_, err := load(t, configSources{File: p})
	if err == nil || !strings.Contains(err.Error(), "training.per_device_train_batch_size") || !strings.Contains(err.Error(), p) {
		t.Fatalf("error %v; want it to name the file and training.per_device_train_batch_size", err)
	}
	p = writeConfig(t, "training:\n  lr_scheduler_type: cosine_annealing\n")
	_, err = load(t, configSources{File: p})
	if err == nil || !strings.Contains(err.Error(), `"training.lr_scheduler_type"`) || !strings.Contains(err.Error(), `"cosine"`) {
		t.Fatalf("error %v; want it to name training.lr_scheduler_type and the allowed values", err)
	}
}

func TestConfigMissingFile(t *testing.T) {
	clearConfigEnv(t)
	p := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := load(t, configSources{File: p})
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("error %v; want it to name %s", err, p)
	}
}

// Every field of TrainConfig has a key, and every key an environment
// variable name that maps back to it.
func TestConfigSchemaCoversTrainConfig(t *testing.T) {
	s := trainSchema
	for _, k := range []string{"model", "device", "quantization.bnb_4bit_compute_dtype", "lora.target_modules",
		"dataset.rename", "training.max_seq_length", "training.completion_only_loss", "training.output_dir"} {
		if _, ok := s.leaves[k]; !ok {
			t.Errorf("key %q missing from the schema", k)
		}
	}
	if got := envName("training.learning_rate"); got != "OLLAMA_TUNE_TRAINING_LEARNING_RATE" {
		t.Errorf("envName = %s", got)
	}
	if !s.isMap("dataset.rename") || s.isMap("dataset.remove") {
		t.Error("isMap wrong for dataset.rename/remove")
	}
}
