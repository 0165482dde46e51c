package convert

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/template"

	"github.com/ollama-tune/ollama-tune/internal/atomicfile"
)

// Phi3Template is the Ollama TEMPLATE for a Phi-3 fine-tune. It has no
// newline after <|system|>, <|user|>, <|assistant|> or <|end|>, unlike
// Phi-3's chat template and the Ollama library's phi3, on purpose:
// transformers' tokenizer applies those tokens' rstrip flag, so in training
// the newline after them vanished, while llama.cpp keeps it as extra
// tokens (29871, 13) unless the GGUF's general.name makes it apply rstrip
// too. Without the newlines both tokenizers give the ids training saw,
// whatever the base GGUF is called: train/serve token parity.
const Phi3Template = `{{ if .System }}<|system|>{{ .System }}<|end|>{{ end }}{{ if .Prompt }}<|user|>{{ .Prompt }}<|end|>{{ end }}<|assistant|>{{ .Response }}<|end|>`

// Phi3Stops end an answer: the end of turn, the start of another turn,
// and the end of text.
var Phi3Stops = []string{"<|end|>", "<|user|>", "<|assistant|>", "<|endoftext|>"}

// Modelfile is an Ollama Modelfile.
type Modelfile struct {
	From     string // an Ollama model name, a GGUF path or a safetensors folder
	Adapter  string // a GGUF LoRA adapter path; "" for none
	Template string
	System   string
	Stops    []string
	// Params are other PARAMETER lines, in order.
	Params [][2]string
}

// Phi3Modelfile is the Modelfile of a Phi-3 fine-tune: from, an optional
// adapter and system prompt, Phi3Template and Phi3Stops.
func Phi3Modelfile(from, adapter, system string) *Modelfile {
	return &Modelfile{From: from, Adapter: adapter, Template: Phi3Template, System: system, Stops: Phi3Stops}
}

// String renders the Modelfile. Multi-line values use """ quotes, which
// Ollama's parser reads verbatim.
func (m *Modelfile) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "FROM %s\n", m.From)
	if m.Adapter != "" {
		fmt.Fprintf(&b, "ADAPTER %s\n", m.Adapter)
	}
	if m.Template != "" {
		fmt.Fprintf(&b, "TEMPLATE \"\"\"%s\"\"\"\n", m.Template)
	}
	if m.System != "" {
		fmt.Fprintf(&b, "SYSTEM \"\"\"%s\"\"\"\n", m.System)
	}
	for _, s := range m.Stops {
		fmt.Fprintf(&b, "PARAMETER stop %q\n", s)
	}
	for _, p := range m.Params {
		fmt.Fprintf(&b, "PARAMETER %s %s\n", p[0], p[1])
	}
	return b.String()
}

// Check refuses values the Modelfile syntax cannot carry.
func (m *Modelfile) Check() error {
	if m.From == "" {
		return fmt.Errorf("modelfile: FROM is empty")
	}
	for _, f := range []struct{ name, v string }{{"TEMPLATE", m.Template}, {"SYSTEM", m.System}} {
		if strings.Contains(f.v, `"""`) {
			return fmt.Errorf("modelfile: %s contains \"\"\", which ends a Modelfile string", f.name)
		}
	}
	for _, s := range []string{m.From, m.Adapter} {
		if strings.ContainsAny(s, "\n") {
			return fmt.Errorf("modelfile: path %q contains a newline", s)
		}
	}
	return nil
}

// Write stores the Modelfile at path (temporary file, synced, renamed).
func (m *Modelfile) Write(path string) error {
	if err := m.Check(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return atomicfile.WriteFile(path, []byte(m.String()))
}

// RenderPrompt renders a user prompt (and optional system prompt) with an
// Ollama TEMPLATE exactly as Ollama's /api/generate does (its template
// package: the template is cut at {{ .Response }}).
func RenderPrompt(tmpl, system, prompt string) (string, error) {
	t, err := template.Parse(tmpl)
	if err != nil {
		return "", fmt.Errorf("parse template: %w", err)
	}
	var msgs []api.Message
	if system != "" {
		msgs = append(msgs, api.Message{Role: "system", Content: system})
	}
	msgs = append(msgs, api.Message{Role: "user", Content: prompt})
	var b bytes.Buffer
	if err := t.Execute(&b, template.Values{Messages: msgs}); err != nil {
		return "", fmt.Errorf("render template: %w", err)
	}
	return b.String(), nil
}
