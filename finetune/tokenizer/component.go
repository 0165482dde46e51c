package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// component is one stage of tokenizer.json's pipeline (a normalizer,
// pre-tokenizer, decoder or post-processor, or a member of a Sequence of
// them): its "type" and the raw object that type's fields are read from.
type component struct {
	Type  string
	raw   json.RawMessage
	where string // the component's place in the file and its type, for errors
}

// readComponent reads raw's "type"; a null or absent component is nil.
func readComponent(raw json.RawMessage, where string) (*component, error) {
	if isNull(raw) {
		return nil, nil
	}
	var t struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &t); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return &component{Type: t.Type, raw: raw, where: fmt.Sprintf("%s (type %s)", where, t.Type)}, nil
}

// decode reads the component's fields into v.
func (c *component) decode(v any) error {
	if err := json.Unmarshal(c.raw, v); err != nil {
		return fmt.Errorf("%s: %w", c.where, err)
	}
	return nil
}

// unsupported is the error for a type this package does not implement.
func (c *component) unsupported(kind, supported string) error {
	return fmt.Errorf("%s: %s type %q is not implemented (supported: %s)", c.where, kind, c.Type, supported)
}

// parseSequence parses the members a Sequence lists under field with
// parse, dropping null ones.
func parseSequence[T any](c *component, field string, parse func(json.RawMessage, string) (T, error)) ([]T, error) {
	var fields map[string]json.RawMessage
	if err := c.decode(&fields); err != nil {
		return nil, err
	}
	var members []json.RawMessage
	if raw := fields[field]; !isNull(raw) {
		if err := json.Unmarshal(raw, &members); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", c.where, field, err)
		}
	}
	var seq []T
	for i, r := range members {
		m, err := parse(r, fmt.Sprintf("%s.%s[%d]", c.where, field, i))
		if err != nil {
			return nil, err
		}
		if any(m) != nil {
			seq = append(seq, m)
		}
	}
	return seq, nil
}

// parseReplace reads a Replace normalizer or decoder: a literal or regex
// pattern and the content put in its place.
func parseReplace(c *component) (replaceNorm, error) {
	var v struct {
		Pattern jsonPattern `json:"pattern"`
		Content string      `json:"content"`
	}
	if err := c.decode(&v); err != nil {
		return replaceNorm{}, err
	}
	lit, re, err := v.Pattern.compile(c.where)
	if err != nil {
		return replaceNorm{}, err
	}
	return replaceNorm{literal: lit, re: re, content: v.Content}, nil
}

// parseMetaspace reads the fields the Metaspace pre-tokenizer and decoder
// share: the replacement ("▁" when absent), the prepend scheme, and (the
// pre-tokenizer's) split, true when absent.
func parseMetaspace(c *component) (replacement string, scheme prependScheme, split bool, err error) {
	var v struct {
		Replacement    string `json:"replacement"`
		PrependScheme  string `json:"prepend_scheme"`
		AddPrefixSpace *bool  `json:"add_prefix_space"`
		Split          *bool  `json:"split"`
	}
	if err := c.decode(&v); err != nil {
		return "", 0, false, err
	}
	if scheme, err = parsePrependScheme(v.PrependScheme, v.AddPrefixSpace); err != nil {
		return "", 0, false, fmt.Errorf("%s: %w", c.where, err)
	}
	if v.Replacement == "" {
		v.Replacement = metaspace
	}
	return v.Replacement, scheme, v.Split == nil || *v.Split, nil
}

func isNull(raw json.RawMessage) bool {
	s := bytes.TrimSpace(raw) // not string(raw): the model's is most of the file
	return len(s) == 0 || string(s) == "null"
}
