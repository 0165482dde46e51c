package finetune

import (
	"strings"
	"testing"
)

var tutorialModules = []string{"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}

func TestTrainableParamsPhi3Tutorial(t *testing.T) {
	cfg := Phi3Mini4k()
	if got := TrainableParams(cfg, 8, tutorialModules); got != 12_582_912 {
		t.Errorf("r=8 on the four modules: %d trainable parameters, the tutorial printed 12,582,912", got)
	}
	if got := TrainableParams(cfg, 8, []string{"all-linear", "self_attn.qkv_proj"}); got != 12_582_912 {
		t.Errorf("all-linear (and a duplicate) should equal the four modules: %d", got)
	}
	// qkv_proj alone: 8 * (3072 + 9216) per layer.
	if got := TrainableParams(cfg, 8, []string{"qkv_proj"}); got != 32*8*(3072+9216) {
		t.Errorf("qkv_proj alone: %d", got)
	}
	if got := TrainableParams(cfg, 8, []string{"q_proj"}); got != 0 {
		t.Errorf("q_proj is not a Phi-3 module, yet counted %d", got)
	}
}

func TestMemoryFootprintPhi3Tutorial(t *testing.T) {
	cfg := Phi3Mini4k()
	if got := MemoryFootprint(cfg, true, 2, nil); got != 2_206_341_312 {
		t.Errorf("after the 4-bit load: %d bytes, get_memory_footprint printed 2,206,341,312", got)
	}
	lora := &LoRAShape{Rank: 8, Modules: tutorialModules}
	if got := MemoryFootprint(cfg, true, 4, lora); got != 2_651_074_752 {
		t.Errorf("after prepare_model_for_kbit_training and LoRA: %d bytes, the tutorial printed 2,651,074,752", got)
	}
	// The bf16 model without quantization: 3,821,079,552 parameters * 2 + 192.
	if got := MemoryFootprint(cfg, false, 2, nil); got != 3_821_079_552*2+192 {
		t.Errorf("bf16: %d bytes", got)
	}
}

func TestLoRAShapeValidate(t *testing.T) {
	if err := (&LoRAShape{Rank: 8, Modules: tutorialModules}).Validate(); err != nil {
		t.Errorf("tutorial shape rejected: %v", err)
	}
	err := (&LoRAShape{Rank: 8, Modules: []string{"q_proj"}}).Validate()
	if err == nil || !strings.Contains(err.Error(), `"q_proj"`) || !strings.Contains(err.Error(), "qkv_proj") {
		t.Errorf("an unknown module must be named with the choices: %v", err)
	}
	if (&LoRAShape{Rank: 0, Modules: tutorialModules}).Validate() == nil {
		t.Error("rank 0 accepted")
	}
}
