package convert

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/chat"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

// The served-output check: the answers Ollama gives at temperature 0 must
// be the trainer's own greedy answers with the adapter. A model whose
// adapter was silently not applied (or applied to the wrong base, or
// tokenized differently) answers like the base and fails it.

// Reference produces the trainer's greedy continuation of prompt ids,
// stopping at a stop id (not returned) or after maxNew tokens.
type Reference interface {
	Greedy(ctx context.Context, prompt []int32, maxNew int, stop []int32) ([]int32, error)
}

// ModelReference generates greedily with the model Load builds, on first
// use; Close frees it. A reference for any base: a checkpoint folder
// (NewCPUReference), a GGUF file (finetune.LoadGGUFModelWithAdapter).
type ModelReference struct {
	Load func() (*finetune.Model, error)

	once sync.Once
	m    *finetune.Model
	err  error
}

// NewCPUReference runs the base checkpoint in baseDir with the adapter in
// adapterDir ("" for the base alone) on the CPU backend in this process.
func NewCPUReference(baseDir, adapterDir string) *ModelReference {
	return &ModelReference{Load: func() (*finetune.Model, error) {
		return finetune.LoadCheckpointModel(finetune.NewCPUBackend(finetune.CPUOptions{}), baseDir, finetune.ModelOptions{}, adapterDir)
	}}
}

// Greedy implements Reference.
func (r *ModelReference) Greedy(ctx context.Context, prompt []int32, maxNew int, stop []int32) ([]int32, error) {
	r.once.Do(func() { r.m, r.err = r.Load() })
	if r.err != nil {
		return nil, r.err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if stop == nil {
		stop = []int32{}
	}
	return r.m.Generate(prompt, finetune.GenerateOptions{MaxNewTokens: maxNew, StopIDs: stop})
}

// Close frees the model.
func (r *ModelReference) Close() {
	if r.m != nil {
		r.m.Free()
	}
}

// CheckOptions describe a served-output check.
type CheckOptions struct {
	Model     string   // the Ollama model name
	Prompts   []string // user prompts
	MaxTokens int      // new tokens per answer (default 32)
	System    string   // the Modelfile's SYSTEM, if any
	// Tokenizer and Template are the trainer's (transformers-exact ids and
	// the chat template training rendered examples with).
	Tokenizer *tokenizer.Tokenizer
	Template  *chat.Template
	Reference Reference
}

// CheckResult is one prompt's comparison.
type CheckResult struct {
	Prompt    string
	Want      string  // the trainer's greedy answer
	WantIDs   []int32 // its ids
	Got       string  // Ollama's answer
	PromptIDs []int32 // the ids training gives the prompt
	// ServedIDs are the ids Ollama's tokenizer gave prompt + answer (the
	// context field); nil when the server sent none.
	ServedIDs []int
	// PromptParity is false when ServedIDs do not start with PromptIDs:
	// the served prompt is not the trained one.
	PromptParity bool
	Match        bool
}

// CheckReport is the outcome of a served-output check.
type CheckReport struct {
	Model   string
	Results []CheckResult
}

// OK reports whether every answer matched.
func (r *CheckReport) OK() bool {
	for _, c := range r.Results {
		if !c.Match || !c.PromptParity {
			return false
		}
	}
	return true
}

// stopIDs are the ids that end an answer: <|end|> and EOS.
func stopIDs(tok *tokenizer.Tokenizer) []int32 {
	var ids []int32
	for _, s := range Phi3Stops {
		if id, ok := tok.TokenToID(s); ok && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	if eos := tok.EOS(); eos >= 0 && !slices.Contains(ids, eos) {
		ids = append(ids, eos)
	}
	return ids
}

// normalizeAnswer compares answers as text: llama.cpp's first piece keeps
// the "▁" of "▁Strong" as a leading space, which transformers' decoder
// strips, and trailing whitespace before a stop is not meaningful.
func normalizeAnswer(s string) string {
	return strings.TrimSpace(s)
}

// ServedOutputCheck runs every prompt through Ollama (/api/generate,
// temperature 0) and through the reference, and compares the answers.
func ServedOutputCheck(ctx context.Context, c *Client, o CheckOptions) (*CheckReport, error) {
	if o.MaxTokens <= 0 {
		o.MaxTokens = 32
	}
	rep := &CheckReport{Model: o.Model}
	stop := stopIDs(o.Tokenizer)
	for _, p := range o.Prompts {
		msgs := []chat.Message{{Role: "user", Content: p}}
		if o.System != "" {
			msgs = append([]chat.Message{{Role: "system", Content: o.System}}, msgs...)
		}
		text, err := o.Template.Render(msgs, true)
		if err != nil {
			return nil, fmt.Errorf("served-output check: render %q: %w", p, err)
		}
		promptIDs := o.Tokenizer.Encode(text, false)
		want, err := o.Reference.Greedy(ctx, promptIDs, o.MaxTokens, stop)
		if err != nil {
			return nil, fmt.Errorf("served-output check: trainer's answer to %q: %w", p, err)
		}
		got, err := c.Generate(ctx, o.Model, p, o.MaxTokens)
		if err != nil {
			return nil, fmt.Errorf("served-output check: %w", err)
		}
		res := CheckResult{
			Prompt: p, Want: o.Tokenizer.Decode(want, true), WantIDs: want, Got: got.Response,
			PromptIDs: promptIDs, ServedIDs: got.Context, PromptParity: true,
		}
		if got.Context != nil {
			res.PromptParity = len(got.Context) >= len(promptIDs)
			for i := 0; res.PromptParity && i < len(promptIDs); i++ {
				res.PromptParity = got.Context[i] == int(promptIDs[i])
			}
		}
		res.Match = normalizeAnswer(res.Want) == normalizeAnswer(res.Got)
		rep.Results = append(rep.Results, res)
	}
	return rep, nil
}

// Print writes the report; a failure is loud and says what it means.
func (r *CheckReport) Print(w io.Writer) {
	bad := 0
	for _, c := range r.Results {
		if !c.Match || !c.PromptParity {
			bad++
		}
	}
	if bad == 0 {
		fmt.Fprintf(w, "served-output check passed: %s answered all %d prompts exactly as the trainer does with the adapter\n", r.Model, len(r.Results))
		for _, c := range r.Results {
			fmt.Fprintf(w, "  %q -> %q\n", c.Prompt, normalizeAnswer(c.Got))
		}
		return
	}
	line := strings.Repeat("!", 72)
	fmt.Fprintln(w, line)
	fmt.Fprintf(w, "SERVED-OUTPUT CHECK FAILED: %s differs from the trainer on %d of %d prompts\n", r.Model, bad, len(r.Results))
	fmt.Fprintln(w, line)
	for _, c := range r.Results {
		if c.Match && c.PromptParity {
			continue
		}
		fmt.Fprintf(w, "prompt:  %q\n", c.Prompt)
		fmt.Fprintf(w, "trainer: %q\n", normalizeAnswer(c.Want))
		fmt.Fprintf(w, "ollama:  %q\n", normalizeAnswer(c.Got))
		if !c.Match {
			fmt.Fprintf(w, "         first difference at character %d\n", firstDiff(normalizeAnswer(c.Want), normalizeAnswer(c.Got)))
		}
		if !c.PromptParity {
			n := min(len(c.ServedIDs), len(c.PromptIDs)+4)
			fmt.Fprintf(w, "prompt ids differ: training %v, ollama %v\n", c.PromptIDs, c.ServedIDs[:n])
		}
	}
	fmt.Fprintln(w, "This is what an adapter that Ollama did not apply looks like (the model answers like its base),")
	fmt.Fprintln(w, "or a prompt format that differs from training. Check that the model was created from the")
	fmt.Fprintln(w, "base the adapter was trained on, that `ollama show --modelfile` lists the ADAPTER, and that the")
	fmt.Fprintln(w, "server log shows no LoRA loading error; a quantized base (q4) can also change greedy answers.")
	fmt.Fprintln(w, line)
}

func firstDiff(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}
