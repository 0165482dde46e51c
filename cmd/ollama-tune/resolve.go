package main

// Finding models and tokenizers: a local directory, or a Hugging Face Hub
// repository fetched into (or found in) the shared Hub cache.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"strings"

	"golang.org/x/term"

	"github.com/ollama-tune/ollama-tune/finetune/hub"
	"github.com/ollama-tune/ollama-tune/finetune/hub/termprogress"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

// Files a model directory needs, by purpose (huggingface_hub allow patterns).
var (
	tokenizerFiles = []string{"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "added_tokens.json"}
	configFiles    = []string{"config.json"}
	weightFiles    = []string{"config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json"}
)

var repoIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$`)

// isTerminal reports whether w is a terminal (progress bars go there only).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// newHubClient is the Hub client from the environment (HF_ENDPOINT,
// HF_TOKEN, HF_HOME, HF_HUB_OFFLINE, ...), drawing download bars on
// progress when it is a terminal.
func newHubClient(progress io.Writer) (*hub.Client, func(), error) {
	c, err := hub.NewFromEnv()
	if err != nil {
		return nil, nil, err
	}
	done := func() {}
	if progress != nil && isTerminal(progress) {
		bars := termprogress.New(progress)
		c.Progress = bars.Update
		done = bars.Finish
	}
	return c, done, nil
}

// resolveDir returns a local directory for name: name itself when it is a
// directory, else the snapshot of the Hub model repository name (owner/repo)
// holding the files matching allow. what says what the directory is for, in
// errors ("model", "tokenizer").
func resolveDir(ctx context.Context, what, name string, allow []string, progress io.Writer) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%s: no directory or Hub repository given", what)
	}
	st, err := os.Stat(name)
	switch {
	case err == nil && st.IsDir():
		return name, nil
	case err == nil:
		return "", fmt.Errorf("%s %s: is a file; give the directory that holds it", what, name)
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("%s %s: %w", what, name, err)
	case !repoIDPattern.MatchString(name) || strings.HasPrefix(name, "./") || strings.HasPrefix(name, "../"):
		return "", fmt.Errorf("%s %s: no such directory (give a local directory, or a Hugging Face repo id such as microsoft/Phi-3-mini-4k-instruct)", what, name)
	}
	c, done, err := newHubClient(progress)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", what, name, err)
	}
	defer done()
	dir, err := c.Snapshot(ctx, hub.Model, name, "", allow)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", what, name, err)
	}
	return dir, nil
}

// loadTokenizer loads the tokenizer of a directory or Hub repository.
func loadTokenizer(ctx context.Context, name string, progress io.Writer) (*tokenizer.Tokenizer, string, error) {
	dir, err := resolveDir(ctx, "tokenizer", name, tokenizerFiles, progress)
	if err != nil {
		return nil, "", err
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		return nil, "", err
	}
	return tok, dir, nil
}

// parseIDs parses token ids separated by spaces and/or commas ("1 2 3",
// "1,2,3", "[1, 2, 3]").
func parseIDs(s string) ([]int32, error) {
	s = strings.TrimSpace(s)
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
	if len(fields) == 0 {
		return nil, errors.New("no token ids")
	}
	ids := make([]int32, len(fields))
	for i, f := range fields {
		var v int64
		if _, err := fmt.Sscan(f, &v); err != nil || v < 0 || v > 1<<31-1 || fmt.Sprint(v) != f {
			return nil, fmt.Errorf("token id %q at position %d is not a non-negative integer", f, i)
		}
		ids[i] = int32(v)
	}
	return ids, nil
}

// formatIDs prints ids separated by single spaces.
func formatIDs(ids []int32) string {
	var b strings.Builder
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprint(&b, id)
	}
	return b.String()
}
