package finetune

import (
	"strings"
	"testing"
)

func TestDefaultTrainConfigIsTheSeed(t *testing.T) {
	c := DefaultTrainConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("default config invalid: %v", err)
	}
	if c.LoRA.R != 8 || c.LoRA.LoRAAlpha != 16 || c.LoRA.LoRADropout != 0.05 {
		t.Errorf("lora = %+v, want the seed's r=8 alpha=16 dropout=0.05", c.LoRA)
	}
	tr := c.Training
	if tr.PerDeviceTrainBatchSize != 16 || tr.MaxSeqLength != 64 || !tr.Packing || tr.NumTrainEpochs != 10 ||
		tr.LearningRate != 3e-4 || tr.Optim != "paged_adamw_8bit" || !tr.GradientCheckpointing || tr.LRSchedulerType != "linear" {
		t.Errorf("training = %+v, not the seed's", tr)
	}
	got := c.LoRA.TargetModulesResolved()
	if strings.Join(got, ",") != "qkv_proj,o_proj,gate_up_proj,down_proj" {
		t.Errorf("target modules = %v", got)
	}
}

func TestTrainConfigErrorsNameKeyAndAllowedValues(t *testing.T) {
	cases := []struct {
		mut  func(*TrainConfig)
		want []string
	}{
		{func(c *TrainConfig) { c.Training.Optim = "adamw" }, []string{`"training.optim"`, `"adamw_torch"`, `"paged_adamw_8bit"`}},
		{func(c *TrainConfig) { c.LoRA.TargetModules = []string{"q_proj"} }, []string{`"lora.target_modules"`, `q_proj`, `qkv_proj`}},
		{func(c *TrainConfig) { c.LoRA.R = 0 }, []string{`"lora.r"`, "positive"}},
		{func(c *TrainConfig) { c.Device = "gpu" }, []string{`"device"`, `"cuda"`}},
		{func(c *TrainConfig) { c.Quantization.Bnb4bitQuantType = "fp4" }, []string{`"quantization.bnb_4bit_quant_type"`, `"nf4"`}},
		{func(c *TrainConfig) { c.Training.NumTrainEpochs = 0; c.Training.MaxSteps = 0 }, []string{"num_train_epochs", "max_steps"}},
		{func(c *TrainConfig) { c.Training.OutputDir = "" }, []string{`"training.output_dir"`}},
		{func(c *TrainConfig) { c.LoRA.Bias = "all" }, []string{`"lora.bias"`, `"none"`}},
		{func(c *TrainConfig) { c.Quantization.KeepDequantizedGB = -1 }, []string{`"quantization.keep_dequantized_gb"`, "-1", "0: none"}},
		{func(c *TrainConfig) { c.Quantization.KeepDequantizedGB = 8; c.Quantization.LoadIn4bit = false },
			[]string{`"quantization.keep_dequantized_gb"`, "load_in_4bit: true"}},
		{func(c *TrainConfig) { c.Training.GradientCheckpointingKeepGB = -0.5 },
			[]string{`"training.gradient_checkpointing_keep_gb"`, "-0.5", "0: recompute everything"}},
		{func(c *TrainConfig) {
			c.Training.GradientCheckpointingKeepGB = 1
			c.Training.GradientCheckpointing = false
		},
			[]string{`"training.gradient_checkpointing_keep_gb"`, "gradient_checkpointing: true"}},
	}
	for _, tc := range cases {
		c := DefaultTrainConfig()
		tc.mut(&c)
		err := c.Validate()
		if err == nil {
			t.Errorf("want an error containing %v, got nil", tc.want)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not mention %s", err, w)
			}
		}
	}
}

func TestAllLinearExpands(t *testing.T) {
	l := LoRASettings{TargetModules: []string{"all-linear"}}
	if got := strings.Join(l.TargetModulesResolved(), ","); got != "qkv_proj,o_proj,gate_up_proj,down_proj" {
		t.Errorf("all-linear -> %s", got)
	}
}

func TestParseConfigDialectsAndRefusals(t *testing.T) {
	hub := `{"architectures":["Phi3ForCausalLM"],"model_type":"phi3","hidden_size":3072,"intermediate_size":8192,
	"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":32,"vocab_size":32064,"rms_norm_eps":1e-05,
	"rope_theta":10000.0,"rope_scaling":null,"sliding_window":2047,"torch_dtype":"bfloat16","bos_token_id":1,"eos_token_id":32000,"pad_token_id":32000,"max_position_embeddings":4096,"hidden_act":"silu"}`
	tf5 := `{"architectures":["Phi3ForCausalLM"],"model_type":"phi3","hidden_size":3072,"intermediate_size":8192,
	"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":32,"vocab_size":32064,"rms_norm_eps":1e-05,
	"rope_parameters":{"rope_theta":10000.0,"rope_type":"default","partial_rotary_factor":1.0},"sliding_window":null,"dtype":"bfloat16","bos_token_id":1,"eos_token_id":32000,"pad_token_id":32000,"max_position_embeddings":4096,"hidden_act":"silu"}`
	for name, js := range map[string]string{"hub": hub, "tf5": tf5} {
		c, err := ParseConfig([]byte(js))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if c.HiddenSize != 3072 || c.RopeTheta != 10000 || c.RotaryDim() != 96 || c.QKVOut() != 9216 || c.TorchDType != "bfloat16" {
			t.Errorf("%s: parsed %+v", name, c)
		}
	}
	for js, want := range map[string]string{
		`{"architectures":["LlamaForCausalLM"],"model_type":"llama"}`:                                                                                                                  "Phi-3",
		`{"architectures":["Phi3ForCausalLM"],"hidden_size":64}`:                                                                                                                       `"intermediate_size" is missing`,
		`{"architectures":["Phi3ForCausalLM"],"hidden_size":64,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":3,"vocab_size":9}`:                                    "multiple",
		`{"architectures":["Phi3ForCausalLM"],"hidden_size":64,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":9,"rope_scaling":{"type":"longrope"}}`: "rope_scaling",
		`not json`: "parse config.json",
	} {
		_, err := ParseConfig([]byte(js))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseConfig(%s) error = %v, want it to mention %q", js, err, want)
		}
	}
}
