package finetune

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/ollama/ollama/api"
	ollamatemplate "github.com/ollama/ollama/template"

	"github.com/ollama-tune/ollama-tune/finetune/chat"
	"github.com/ollama-tune/ollama-tune/finetune/data"
	"github.com/ollama-tune/ollama-tune/finetune/gguf"
	"github.com/ollama-tune/ollama-tune/finetune/ollamastore"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

// Training on the model Ollama already has: model: ollama://NAME.
//
// NewJob resolves the name through ollamastore (the store on disk, else a
// running server's /api/show) to the model's GGUF blob and reads it with
// LoadGGUFBase: the Phi-3 configuration, the tokenizer and the chat
// template all come from the blob; nothing is fetched from the Hub. Train
// builds the model from the blob's weights, dequantized bit-exactly as
// llama.cpp does, then
//
//   - re-quantized to NF4 with quantization.load_in_4bit (the seed's
//     QLoRA path, as for a Hugging Face checkpoint),
//   - or kept as the file's own blocks with quantization.keep_gguf
//     (dequantized a tile of rows at a time; see gguf_weight.go),
//   - or dense in the compute dtype otherwise.
//
// The adapter records the base as base_model_name_or_path = the configured
// ollama:// reference and revision = the blob's digest (sha256:…), so that
// `ollama-tune create` builds the served model FROM that very blob and can
// refuse a base that changed since training.
//
// Which chat template trains, and which serves. Training renders examples
// with the GGUF's own Jinja template (tokenizer.chat_template), the one
// that belongs to these weights. Ollama serves the model with its Go
// TEMPLATE (the model's template layer), and `ollama-tune create` gives the
// fine-tune that same TEMPLATE. The two must present a conversation to the
// model as the same token ids, or the adapter is served prompts it never
// saw. NewJob checks it before anything is trained (CheckServingTemplate):
// a few conversations are rendered both ways and tokenized, the training
// text as training tokenizes it and the served text as llama.cpp does
// (special tokens strip the whitespace on their right only when
// general.name says Phi-3, BOS added when tokenizer.ggml.add_bos_token
// says so); any difference refuses the job with both renderings. Phi-3's
// newlines after <|user|>, <|end|> and <|assistant|> thus count only where
// llama.cpp keeps them.

// OllamaScheme starts a model reference to the Ollama store.
const OllamaScheme = ollamastore.Scheme

// IsOllamaModel reports whether model names a model of the Ollama store
// (ollama://NAME).
func IsOllamaModel(model string) bool {
	return strings.HasPrefix(strings.TrimSpace(model), OllamaScheme)
}

// BlobDigest is the "sha256:<hex>" digest an Ollama blob path is named by
// (blobs/sha256-<hex>), "" when the path is not a blob.
func BlobDigest(path string) string {
	base := filepath.Base(path)
	hex, ok := strings.CutPrefix(base, "sha256-")
	if !ok || len(hex) != 64 || strings.Trim(hex, "0123456789abcdefABCDEF") != "" {
		return ""
	}
	return "sha256:" + strings.ToLower(hex)
}

// resolveOllama resolves model: ollama://NAME: the blob, its tokenizer and
// chat template, the serving-template check.
func (j *Job) resolveOllama(ctx context.Context, r *ollamastore.Resolver, log func(string)) error {
	ref := strings.TrimSpace(j.Config.Model)
	if r == nil {
		r = &ollamastore.Resolver{}
	}
	m, err := r.Resolve(ctx, ref)
	if err != nil {
		return fmt.Errorf("model %s: %w", ref, err)
	}
	if len(m.Adapters) > 0 {
		return &ConfigError{Key: "model", Problem: fmt.Sprintf("%s is a base with %d LoRA adapter(s) already applied (ADAPTER in its Modelfile); train on the base it was created from instead", ref, len(m.Adapters))}
	}
	if len(m.Projectors) > 0 {
		return &ConfigError{Key: "model", Problem: fmt.Sprintf("%s has a vision projector; only text models (Phi-3, Llama-style) can be trained", ref)}
	}
	if log != nil {
		log(fmt.Sprintf("model %s: GGUF blob %s (%.2f GiB, found via the %s)", ref, m.GGUF, float64(m.GGUFSize)/(1<<30), map[string]string{"store": "store " + m.ModelsDir, "api": "Ollama server"}[m.Via]))
	}
	b, err := LoadGGUFBase(m.GGUF)
	if err != nil {
		return fmt.Errorf("model %s: %w", ref, err)
	}
	defer b.Close()
	if err := checkDequantizable(b); err != nil {
		return fmt.Errorf("model %s: %w", ref, err)
	}
	if b.ChatTemplate == "" {
		return fmt.Errorf("model %s: GGUF blob %s has no chat template (tokenizer.chat_template), so the training examples cannot be rendered the way the model was tuned to read them; use a chat model's GGUF", ref, m.GGUF)
	}
	tmpl, err := b.ChatTemplateRenderer()
	if err != nil {
		return fmt.Errorf("model %s: %w", ref, err)
	}
	sc, err := newServingCheck(b, tmpl, m.Template)
	if err != nil {
		return fmt.Errorf("model %s: %w", ref, err)
	}
	for _, msgs := range servingProbes {
		if err := sc.check(msgs); err != nil {
			return fmt.Errorf("model %s: %w", ref, err)
		}
	}
	if m.System != "" && log != nil {
		log(fmt.Sprintf("note: %s has a default SYSTEM message, which Ollama puts before every prompt that has none; a fine-tune created from it keeps it, so train with it in the data or expect the served prompts to differ", ref))
	}
	j.Ollama, j.GGUF, j.serving = m, m.GGUF, sc
	j.Tokenizer, j.Template = b.Tokenizer, tmpl
	j.ggufConfig = b.Config
	j.ggufLinearBytes = b.LinearBytes()
	j.ggufFileType = b.FileType
	return nil
}

// checkDequantizable refuses a file with a weight of a type the
// dequantizers do not cover, naming the tensor, before anything is loaded.
func checkDequantizable(b *GGUFBase) error {
	for _, name := range b.Names() {
		src, err := b.Sources(name)
		if err != nil {
			return err
		}
		for _, t := range src {
			if !gguf.CanDequantize(t.Type) {
				return fmt.Errorf("GGUF file %s: tensor %q (%s) is %s, which ollama-tune cannot dequantize (supported: %v); use a model quantized to one of those, e.g. phi3:mini (Q4_0) or a Q4_K_M/Q8_0 tag",
					b.Path, t.Name, name, t.Type, gguf.DequantizableTypes())
			}
		}
	}
	return nil
}

// servingProbes are the conversations CheckServingTemplate renders: one
// user turn, a system message and a user turn, and a second user turn
// after an answer.
var servingProbes = [][]chat.Message{
	{{Role: "user", Content: "The Force is strong in you!"}},
	{{Role: "system", Content: "You are a helpful assistant."}, {Role: "user", Content: "Hello, how are you today?"}},
	{{Role: "user", Content: "Hi"}, {Role: "assistant", Content: "Hello there."}, {Role: "user", Content: "How old are you?"}},
}

// CheckServingTemplate renders conversations with the chat template that
// trains (train, the GGUF's Jinja template, generation prompt added) and
// with the Ollama TEMPLATE that serves (serving, as Ollama's /api/generate
// and /api/chat render it), tokenizes the first as training does and the
// second as llama.cpp does for the GGUF base b, and returns an error
// showing both when the ids differ. A conversation with a system message
// is skipped when the training template refuses system messages.
func CheckServingTemplate(b *GGUFBase, train *chat.Template, serving string) error {
	sc, err := newServingCheck(b, train, serving)
	if err != nil {
		return err
	}
	for _, msgs := range servingProbes {
		if err := sc.check(msgs); err != nil {
			return err
		}
	}
	return nil
}

// servingCheck compares the training and the serving rendering of
// conversations; the job keeps one to check the first examples of its
// data too (prompt turns as the server would get them).
type servingCheck struct {
	train         *chat.Template
	serving       *ollamatemplate.Template
	tok, serveTok *tokenizer.Tokenizer
	name          string
}

func newServingCheck(b *GGUFBase, train *chat.Template, serving string) (*servingCheck, error) {
	if strings.TrimSpace(serving) == "" {
		return nil, errors.New("the Ollama model has no TEMPLATE, so Ollama would send prompts to it as raw text, never in the chat format the adapter is trained in; create the base with the TEMPLATE of its chat format and train on that")
	}
	st, err := ollamatemplate.Parse(serving)
	if err != nil {
		return nil, fmt.Errorf("the Ollama model's TEMPLATE: %w", err)
	}
	serveTok, err := llamaCppTokenizer(b)
	if err != nil {
		return nil, err
	}
	return &servingCheck{train: train, serving: st, tok: b.Tokenizer, serveTok: serveTok, name: b.Name}, nil
}

// check compares one conversation, rendered with the generation prompt.
// A conversation the training template refuses (raise_exception: a system
// message it has no role for) is not checked: training refuses it too.
func (sc *servingCheck) check(msgs []chat.Message) error {
	trainText, err := sc.train.Render(msgs, true)
	if err != nil {
		var re *chat.RaiseError
		if errors.As(err, &re) {
			return nil
		}
		return fmt.Errorf("render %v with the chat template: %w", msgs, err)
	}
	servedText, err := renderOllama(sc.serving, msgs)
	if err != nil {
		return fmt.Errorf("render %v with the Ollama TEMPLATE: %w", msgs, err)
	}
	trainIDs := sc.tok.Encode(trainText, false)
	servedIDs := sc.serveTok.Encode(servedText, true)
	if k := firstDifference(trainIDs, servedIDs); k >= 0 {
		return &ServingMismatchError{Messages: msgs, TrainText: trainText, ServedText: servedText,
			TrainIDs: trainIDs, ServedIDs: servedIDs, At: k, Name: sc.name}
	}
	return nil
}

// checkExamples checks the prompts of the first examples of the data (the
// turns before the last assistant turn), as Ollama will get them.
func (sc *servingCheck) checkExamples(examples []data.Example) error {
	for i := range examples[:min(len(examples), 3)] {
		ex := &examples[i]
		var msgs []chat.Message
		switch {
		case ex.Conversational() && ex.PromptTurns > 0:
			msgs = ex.Messages[:ex.PromptTurns]
		case ex.Conversational():
			msgs = ex.Messages
			for len(msgs) > 0 && msgs[len(msgs)-1].Role == "assistant" {
				msgs = msgs[:len(msgs)-1]
			}
		case ex.Prompt != "":
			msgs = []chat.Message{{Role: "user", Content: ex.Prompt}}
		}
		if len(msgs) == 0 {
			continue
		}
		if err := sc.check(msgs); err != nil {
			return fmt.Errorf("%v: %w", ex.Pos, err)
		}
	}
	return nil
}

// ServingMismatchError is a conversation that training and serving
// present to the model as different token ids.
type ServingMismatchError struct {
	Messages              []chat.Message
	TrainText, ServedText string
	TrainIDs, ServedIDs   []int32
	At                    int    // index of the first differing id
	Name                  string // the GGUF's general.name
}

func (e *ServingMismatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the GGUF's chat template (training) and the Ollama model's TEMPLATE (serving) give the model different token ids for the same conversation, so the adapter would be served prompts it never saw:\n")
	fmt.Fprintf(&b, "  training: %q\n            ids %v\n", e.TrainText, clipIDs(e.TrainIDs, e.At))
	fmt.Fprintf(&b, "  serving:  %q\n            ids %v\n", e.ServedText, clipIDs(e.ServedIDs, e.At))
	fmt.Fprintf(&b, "  first difference at token %d", e.At)
	if !strings.Contains(strings.ToLower(e.Name), "phi3") && !strings.Contains(strings.ToLower(e.Name), "phi-3") {
		fmt.Fprintf(&b, " (llama.cpp keeps the whitespace after special tokens here: general.name %q does not say Phi-3)", e.Name)
	}
	b.WriteString("\nfix: give the base a TEMPLATE that renders as the chat template does (ollama show --modelfile NAME > Modelfile; edit TEMPLATE; ollama create NAME-tune -f Modelfile) and train on ollama://NAME-tune, or train from the Hugging Face checkpoint")
	return b.String()
}

// clipIDs shows the ids up to a few past the first difference.
func clipIDs(ids []int32, at int) []int32 {
	return ids[:min(len(ids), at+4)]
}

func firstDifference(a, b []int32) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return n
	}
	return -1
}

// renderOllama renders a conversation with an Ollama TEMPLATE as the
// server does for /api/chat and for /api/generate (whose prompt is the
// last user message): the messages in template.Values, the template cut
// at the last response.
func renderOllama(t *ollamatemplate.Template, msgs []chat.Message) (string, error) {
	am := make([]api.Message, len(msgs))
	for i, m := range msgs {
		am[i] = api.Message{Role: m.Role, Content: m.Content}
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, ollamatemplate.Values{Messages: am}); err != nil {
		return "", err
	}
	return buf.String(), nil
}

// llamaCppTokenizer is the GGUF's tokenizer as llama.cpp builds it: the
// rstrip of Phi-3's special tokens keyed on general.name only (the
// training tokenizer also keys it on the phi3 architecture, as
// transformers always strips).
func llamaCppTokenizer(b *GGUFBase) (*tokenizer.Tokenizer, error) {
	if b.Arch != "phi3" {
		return b.Tokenizer, nil
	}
	l := strings.ToLower(b.Name)
	if strings.Contains(l, "phi3") || strings.Contains(l, "phi-3") {
		return b.Tokenizer, nil
	}
	tk, _, err := ggufTokenizer(b.file, "", b.Name)
	return tk, err
}

// LoadGGUFModel builds the model from a GGUF base: opts.Quantize
// re-quantizes the decoder linears to NF4; keepGGUF keeps them as the
// file's blocks (the backend must implement GGUFWeighter), and needs the
// base open until the model is freed.
func LoadGGUFModel(b Backend, base *GGUFBase, opts ModelOptions, keepGGUF bool) (*Model, error) {
	if keepGGUF {
		gw, ok := b.(GGUFWeighter)
		if !ok {
			return nil, fmt.Errorf("backend %s cannot keep GGUF weights (quantization.keep_gguf); set keep_gguf: false, with load_in_4bit: true for NF4", b.Name())
		}
		opts.Quantize = false
		opts.LinearWeight = func(name string, out, in int) (Weight, error) {
			m, err := base.Matrix(name)
			if err != nil {
				return nil, err
			}
			return gw.GGUFWeight(m)
		}
	}
	m, err := NewModel(b, base.Config, base.Float32, opts)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", base.Path, err)
	}
	return m, nil
}

// LoadGGUFModelWithAdapter builds the GGUF base's model (dense, or with
// the linears kept as blocks: the same values in a fraction of the
// memory) with the PEFT adapter in adapterDir applied, validated against
// the base.
func LoadGGUFModelWithAdapter(b Backend, base *GGUFBase, opts ModelOptions, keepGGUF bool, adapterDir string) (*Model, error) {
	return loadWithAdapter(base.Config, opts, adapterDir, func(opts ModelOptions) (*Model, error) { return LoadGGUFModel(b, base, opts, keepGGUF) })
}
