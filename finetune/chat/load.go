package chat

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ErrNoTemplate is FromTokenizerDir's error for a folder without a chat
// template (a base model's tokenizer: its examples are plain text).
var ErrNoTemplate = errors.New("no chat template")

// FromTokenizerDir loads the chat template and special tokens of a tokenizer
// saved by transformers (the folder holding tokenizer_config.json). It is
// the one reader of a folder's chat template; a folder without one gives
// an error that is ErrNoTemplate.
//
// The template comes from chat_template.jinja when that file exists, else
// from tokenizer_config.json's chat_template (a string, or a list of
// {name, template} where "default" is used), as transformers'
// from_pretrained does: the separate file clobbers the config entry. When
// both exist and differ, the file still wins and Warnings says so.
//
// Special tokens are tokenizer_config.json's *_token entries (strings or
// AddedToken objects with "content"), overridden by special_tokens_map.json,
// which is what transformers passes to the template as special_tokens_map.
func FromTokenizerDir(dir string) (*Template, error) {
	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	var cfg map[string]json.RawMessage
	if b, err := os.ReadFile(cfgPath); err == nil {
		if err := json.Unmarshal(b, &cfg); err != nil {
			return nil, fmt.Errorf("read %s: %w", cfgPath, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", cfgPath, err)
	}

	special := map[string]string{}
	addSpecial(special, cfg)
	mapPath := filepath.Join(dir, "special_tokens_map.json")
	if b, err := os.ReadFile(mapPath); err == nil {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("read %s: %w", mapPath, err)
		}
		addSpecial(special, m)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", mapPath, err)
	}

	var fromConfig string
	if raw, ok := cfg["chat_template"]; ok && string(raw) != "null" {
		s, err := configTemplate(raw)
		if err != nil {
			return nil, fmt.Errorf("read %s: chat_template: %w", cfgPath, err)
		}
		fromConfig = s
	}
	jinjaPath := filepath.Join(dir, "chat_template.jinja")
	fromFile, err := os.ReadFile(jinjaPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", jinjaPath, err)
	}
	if err == nil && len(strings.TrimSpace(string(fromFile))) == 0 {
		err = fs.ErrNotExist // an empty file is no template (as the tokenizer's reader took it)
	}

	var warnings []string
	source, text := "", ""
	switch {
	case err == nil:
		source, text = jinjaPath, string(fromFile)
		if fromConfig != "" && fromConfig != text {
			warnings = append(warnings, fmt.Sprintf("%s and %s chat_template differ; using %s as transformers does", jinjaPath, cfgPath, jinjaPath))
		}
	case fromConfig != "":
		source, text = cfgPath+" chat_template", fromConfig
	default:
		return nil, fmt.Errorf("%s: %w: neither chat_template.jinja nor a chat_template entry in tokenizer_config.json; add one, or train on plain text", dir, ErrNoTemplate)
	}
	t, err := NewNamed(source, text, special)
	if err != nil {
		return nil, err
	}
	t.warnings = warnings
	return t, nil
}

// Warnings lists what loading noticed but did not refuse.
func (t *Template) Warnings() []string { return t.warnings }

// configTemplate reads tokenizer_config.json's chat_template: a string or a
// list of named templates.
func configTemplate(raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var named []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &named); err != nil {
		return "", fmt.Errorf("want a string or a list of {name, template}: %w", err)
	}
	var names []string
	for _, n := range named {
		if n.Name == "default" {
			return n.Template, nil
		}
		names = append(names, n.Name)
	}
	sort.Strings(names)
	return "", fmt.Errorf("no template named \"default\" among %s", strings.Join(names, ", "))
}

// addSpecial copies *_token entries (a string or an AddedToken object).
func addSpecial(dst map[string]string, m map[string]json.RawMessage) {
	for k, raw := range m {
		if !strings.HasSuffix(k, "_token") {
			continue
		}
		var s string
		if err := json.Unmarshal(raw, &s); err == nil {
			dst[k] = s
			continue
		}
		var tok struct {
			Content *string `json:"content"`
		}
		if err := json.Unmarshal(raw, &tok); err == nil && tok.Content != nil {
			dst[k] = *tok.Content
		}
	}
}
