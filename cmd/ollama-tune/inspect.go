package main

// inspect prints what the seed notebook prints about its model, from
// config.json alone (no weights): print(model) of the PEFT model, its
// get_memory_footprint() and print_trainable_parameters().
//
// The module tree is that of transformers 4.56 (the seed's pin) for
// Phi3ForCausalLM, with bitsandbytes' Linear4bit for the quantized decoder
// linears and PEFT's LoRA wrappers (lora.Linear4bit) on the target modules,
// printed by torch's nn.Module.__repr__ rules: "(name): Class(extra)" per
// child, two spaces of indent per level, and ModuleList's grouping of
// identical consecutive children as "(0-31): 32 x ...".

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/internal/pyjson"
)

func newInspectCmd() *cobra.Command {
	var base bool
	cmd := &cobra.Command{
		Use:   "inspect --model DIR [--config FILE]",
		Short: "Print the model's module tree, memory footprint and trainable parameters",
		Long: `Print what the seed notebook prints about its model, computed from
config.json alone (no weights are read, so it works on the real
Phi-3-mini's config):

  print(model)                        the module tree of the PEFT model: which
                                      linears are 4-bit (Linear4bit) and which
                                      carry LoRA A/B, with their shapes
  model.get_memory_footprint()        after the 4-bit load, and after
                                      prepare_model_for_kbit_training + LoRA
  model.print_trainable_parameters()  trainable and total parameter counts

The quantization and LoRA settings come from the configuration (--config,
OLLAMA_TUNE_* variables, --set); the defaults are the seed's.`,
		Args: cobra.NoArgs,
	}
	cf := addConfigFlags(cmd)
	cmd.Flags().BoolVar(&base, "base", false, "print the base model without LoRA (as after the 4-bit load)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		tc, err := cf.load()
		if err != nil {
			return err
		}
		dir, err := resolveDir(cmd.Context(), "model", tc.Model, configFiles, cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		return inspectModel(cmd.OutOrStdout(), filepath.Join(dir, "config.json"), tc, !base)
	}
	return cmd
}

func init() { rootCmd.AddCommand(newInspectCmd()) }

// configExtras are the config.json fields the module tree shows that
// finetune.Config does not keep (or keeps as float32, whose float64 repr
// would not be Python's).
type configExtras struct {
	RMSNormEps float64  `json:"rms_norm_eps"`
	ResidPdrop *float64 `json:"resid_pdrop"`
}

func inspectModel(w io.Writer, configPath string, tc finetune.TrainConfig, withLoRA bool) error {
	cfg, err := finetune.LoadConfig(configPath)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(configPath)
	if err != nil {
		return err
	}
	var ex configExtras
	if err := json.Unmarshal(b, &ex); err != nil {
		return fmt.Errorf("%s: %w", configPath, err)
	}
	if ex.RMSNormEps == 0 {
		ex.RMSNormEps = float64(cfg.RMSNormEps)
	}
	resid := 0.0 // Phi3Config's default
	if ex.ResidPdrop != nil {
		resid = *ex.ResidPdrop
	}

	q := tc.Quantization.LoadIn4bit
	var lora *finetune.LoRAShape
	if withLoRA {
		lora = &finetune.LoRAShape{Rank: tc.LoRA.R, Modules: tc.LoRA.TargetModules}
		if err := lora.Validate(); err != nil {
			return err
		}
	}
	tree := phi3Tree(cfg, ex.RMSNormEps, resid, q, lora, tc.LoRA.LoRADropout)
	if _, err := fmt.Fprintln(w, tree.String()); err != nil {
		return err
	}
	fmt.Fprintln(w)

	// print_trainable_parameters: a 4-bit weight counts its numel (PEFT
	// multiplies the packed Params4bit's numel by 2).
	total := baseParams(cfg)
	var trainable int64
	if lora != nil {
		trainable = finetune.TrainableParams(cfg, lora.Rank, lora.Modules)
		total += trainable
	}
	fmt.Fprintf(w, "trainable params: %s || all params: %s || trainable%%: %.4f\n",
		commas(trainable), commas(total), 100*float64(trainable)/float64(total))

	// get_memory_footprint: after the load (float16 for what 4-bit leaves
	// alone, since the seed passes no torch_dtype; float32 without 4-bit),
	// then after prepare_model_for_kbit_training (non-quantized parameters
	// upcast to float32) and LoRA.
	loadBytes := 4
	what := "load (float32)"
	if q {
		loadBytes, what = 2, "4-bit load"
	}
	fp := finetune.MemoryFootprint(cfg, q, loadBytes, nil)
	fmt.Fprintf(w, "memory footprint after the %s: %s bytes (%.2f MB)\n", what, commas(fp), float64(fp)/1e6)
	if lora != nil {
		fp = finetune.MemoryFootprint(cfg, q, 4, lora)
		how := "with LoRA"
		if q {
			how = "after prepare_model_for_kbit_training and LoRA"
		}
		fmt.Fprintf(w, "memory footprint %s: %s bytes (%.2f MB)\n", how, commas(fp), float64(fp)/1e6)
	}
	return nil
}

// baseParams is the base model's parameter count: embeddings, lm_head
// (unless tied), the decoder linears and the RMSNorm weights.
func baseParams(cfg *finetune.Config) int64 {
	var n int64
	for _, m := range finetune.LinearModules {
		out, in := finetune.LinearShape(cfg, m)
		n += int64(out) * int64(in)
	}
	n *= int64(cfg.NumLayers)
	embed := int64(cfg.VocabSize) * int64(cfg.HiddenSize)
	if !cfg.TieWordEmbeddings {
		embed *= 2
	}
	return n + embed + int64(2*cfg.NumLayers+1)*int64(cfg.HiddenSize)
}

// commas formats n as Python's f"{n:,d}".
func commas(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// ---- torch's module repr ----

// module is a node of an nn.Module tree: its class name, extra_repr and
// named children in registration order.
type module struct {
	name     string
	extra    string
	children []child
	list     bool // nn.ModuleList: repr groups identical consecutive children
}

type child struct {
	key string
	m   *module
}

func (m *module) add(key string, c *module) *module {
	m.children = append(m.children, child{key, c})
	return m
}

// addIndent is torch.nn.modules.module._addindent: every line but the
// first gets n more spaces.
func addIndent(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) == 1 {
		return s
	}
	pad := strings.Repeat(" ", n)
	for i := 1; i < len(lines); i++ {
		lines[i] = pad + lines[i]
	}
	return strings.Join(lines, "\n")
}

// String is nn.Module.__repr__ (ModuleList.__repr__ for lists).
func (m *module) String() string {
	if m.list {
		return m.listString()
	}
	var extra, kids []string
	if m.extra != "" {
		extra = strings.Split(m.extra, "\n")
	}
	for _, c := range m.children {
		kids = append(kids, "("+c.key+"): "+addIndent(c.m.String(), 2))
	}
	lines := append(slices.Clone(extra), kids...)
	s := m.name + "("
	if len(lines) > 0 {
		if len(extra) == 1 && len(kids) == 0 {
			s += extra[0]
		} else {
			s += "\n  " + strings.Join(lines, "\n  ") + "\n"
		}
	}
	return s + ")"
}

func (m *module) listString() string {
	if len(m.children) == 0 {
		return m.name + "()"
	}
	type group struct {
		start, end int
		repr       string
	}
	var groups []group
	for i, c := range m.children {
		r := c.m.String()
		if n := len(groups); n > 0 && groups[n-1].repr == r {
			groups[n-1].end = i
			continue
		}
		groups = append(groups, group{i, i, r})
	}
	var lines []string
	for _, g := range groups {
		l := fmt.Sprintf("(%d): %s", g.start, g.repr)
		if g.start != g.end {
			l = fmt.Sprintf("(%d-%d): %d x %s", g.start, g.end, g.end-g.start+1, g.repr)
		}
		lines = append(lines, addIndent(l, 2))
	}
	return m.name + "(\n  " + strings.Join(lines, "\n  ") + "\n)"
}

func leaf(name, extra string) *module { return &module{name: name, extra: extra} }

func linearExtra(in, out int) string {
	return fmt.Sprintf("in_features=%d, out_features=%d, bias=False", in, out)
}

func dropout(p float64) *module {
	return leaf("Dropout", fmt.Sprintf("p=%s, inplace=False", pyjson.Repr(p)))
}

// phi3Tree builds the module tree of Phi3ForCausalLM (transformers 4.56),
// 4-bit when quantized, wrapped by PEFT when lora is not nil.
func phi3Tree(cfg *finetune.Config, eps, residPdrop float64, quantized bool, lora *finetune.LoRAShape, loraDropout float64) *module {
	targets := map[string]bool{}
	if lora != nil {
		for _, t := range lora.Modules {
			for _, full := range finetune.LinearModules {
				leafName := full[strings.LastIndexByte(full, '.')+1:]
				if strings.EqualFold(t, "all-linear") || t == leafName || t == full {
					targets[leafName] = true
				}
			}
		}
	}
	linearClass := "Linear"
	if quantized {
		linearClass = "Linear4bit"
	}
	decoderLinear := func(name string) *module {
		out, in := finetune.LinearShape(cfg, moduleByLeaf(name))
		base := leaf(linearClass, linearExtra(in, out))
		if !targets[name] {
			return base
		}
		// peft/tuners/lora/layer.py LoraLayer.__init__ and update_layer:
		// the ModuleDicts in this order, one "default" adapter each;
		// lora_dropout is Identity when p is 0.
		drop := dropout(loraDropout)
		if loraDropout == 0 {
			drop = leaf("Identity", "")
		}
		return (&module{name: "lora." + linearClass}).
			add("base_layer", base).
			add("lora_dropout", (&module{name: "ModuleDict"}).add("default", drop)).
			add("lora_A", (&module{name: "ModuleDict"}).add("default", leaf("Linear", linearExtra(in, lora.Rank)))).
			add("lora_B", (&module{name: "ModuleDict"}).add("default", leaf("Linear", linearExtra(lora.Rank, out)))).
			add("lora_embedding_A", leaf("ParameterDict", "")).
			add("lora_embedding_B", leaf("ParameterDict", "")).
			add("lora_magnitude_vector", leaf("ModuleDict", ""))
	}
	norm := func() *module {
		return leaf("Phi3RMSNorm", fmt.Sprintf("(%d,), eps=%s", cfg.HiddenSize, pyjson.Repr(eps)))
	}
	act := "SiLU" // ACT2FN["silu"] is nn.SiLU
	if cfg.HiddenAct != "" && cfg.HiddenAct != "silu" && cfg.HiddenAct != "swish" {
		act = cfg.HiddenAct
	}

	layers := &module{name: "ModuleList", list: true}
	for i := 0; i < cfg.NumLayers; i++ {
		attn := (&module{name: "Phi3Attention"}).
			add("o_proj", decoderLinear("o_proj")).
			add("qkv_proj", decoderLinear("qkv_proj"))
		mlp := (&module{name: "Phi3MLP"}).
			add("gate_up_proj", decoderLinear("gate_up_proj")).
			add("down_proj", decoderLinear("down_proj")).
			add("activation_fn", leaf(act, ""))
		layer := (&module{name: "Phi3DecoderLayer"}).
			add("self_attn", attn).
			add("mlp", mlp).
			add("input_layernorm", norm()).
			add("post_attention_layernorm", norm()).
			add("resid_attn_dropout", dropout(residPdrop)).
			add("resid_mlp_dropout", dropout(residPdrop))
		layers.add(strconv.Itoa(i), layer)
	}
	embed := fmt.Sprintf("%d, %d", cfg.VocabSize, cfg.HiddenSize)
	if cfg.PadTokenID >= 0 {
		embed += fmt.Sprintf(", padding_idx=%d", cfg.PadTokenID)
	}
	model := (&module{name: "Phi3Model"}).
		add("embed_tokens", leaf("Embedding", embed)).
		add("layers", layers).
		add("norm", norm()).
		add("rotary_emb", leaf("Phi3RotaryEmbedding", ""))
	// lm_head stays a plain Linear: bitsandbytes skips the output layer,
	// and PEFT does not adapt it.
	causal := (&module{name: "Phi3ForCausalLM"}).
		add("model", model).
		add("lm_head", leaf("Linear", linearExtra(cfg.HiddenSize, cfg.VocabSize)))
	if lora == nil {
		return causal
	}
	return (&module{name: "PeftModelForCausalLM"}).
		add("base_model", (&module{name: "LoraModel"}).add("model", causal))
}

// moduleByLeaf maps "qkv_proj" to its LinearModules entry.
func moduleByLeaf(name string) string {
	for _, m := range finetune.LinearModules {
		if strings.HasSuffix(m, "."+name) || m == name {
			return m
		}
	}
	return name
}
