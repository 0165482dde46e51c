// Package ollamastore finds a model that Ollama already has: its GGUF blob,
// chat template and parameters, from the store on disk (OLLAMA_MODELS,
// default ~/.ollama/models) or through a running server's /api/show.
//
// The store's layout (Ollama's manifest package):
//
//	manifests/HOST/NAMESPACE/MODEL/TAG   a JSON manifest whose layers name
//	                                     blobs by digest and media type
//	blobs/sha256-HEX                     each layer's bytes
//
// The layer media types used here are application/vnd.ollama.image.model
// (the GGUF), .template (a Go template), .system, .params (JSON), .license,
// .adapter and .projector.
package ollamastore

import (
	"fmt"
	"path/filepath"
	"strings"
)

// The parts a short name leaves out, as Ollama fills them in.
const (
	DefaultHost      = "registry.ollama.ai"
	DefaultNamespace = "library"
	DefaultTag       = "latest"
)

// Scheme is the prefix of a model reference in a job file: ollama://phi3:mini.
const Scheme = "ollama://"

// Name is a fully qualified Ollama model name.
type Name struct {
	Host, Namespace, Model, Tag string
}

// ParseName parses "[ollama://][host/][namespace/]model[:tag]" the way
// Ollama does (types/model.ParseName): missing parts take the defaults
// (registry.ollama.ai, library, latest).
func ParseName(s string) (Name, error) {
	orig := s
	s = strings.TrimPrefix(strings.TrimSpace(s), Scheme)
	if s == "" {
		return Name{}, fmt.Errorf("model name %q is empty; write it as Ollama does, e.g. phi3:mini", orig)
	}
	var n Name
	// "/" cannot appear in a tag, so a ":" after the last "/" starts the tag
	// (a ":" before it belongs to a host:port).
	if i := strings.LastIndex(s, ":"); i > strings.LastIndex(s, "/") {
		s, n.Tag = s[:i], s[i+1:]
		if n.Tag == "" {
			return Name{}, fmt.Errorf("model name %q: the tag after \":\" is empty", orig)
		}
	}
	parts := strings.Split(s, "/")
	switch len(parts) {
	case 1:
		n.Model = parts[0]
	case 2:
		n.Namespace, n.Model = parts[0], parts[1]
	case 3:
		n.Host, n.Namespace, n.Model = parts[0], parts[1], parts[2]
	default:
		return Name{}, fmt.Errorf("model name %q has %d parts; the form is [host/][namespace/]model[:tag]", orig, len(parts))
	}
	if n.Host == "" {
		n.Host = DefaultHost
	}
	if n.Namespace == "" && len(parts) < 2 {
		n.Namespace = DefaultNamespace
	}
	if n.Tag == "" {
		n.Tag = DefaultTag
	}
	for _, p := range []struct{ what, v string }{{"host", n.Host}, {"namespace", n.Namespace}, {"model", n.Model}, {"tag", n.Tag}} {
		if err := validPart(p.what, p.v); err != nil {
			return Name{}, fmt.Errorf("model name %q: %w", orig, err)
		}
	}
	return n, nil
}

// validPart follows Ollama's isValidPart: a letter, digit or "_" first,
// then letters, digits, "_", "-", "." (not in a namespace) and ":" (only in
// a host); at most 350 characters (80 for a tag).
func validPart(what, s string) error {
	limit := 350
	if what == "tag" {
		limit = 80
	}
	if s == "" {
		return fmt.Errorf("the %s is empty", what)
	}
	if len(s) > limit {
		return fmt.Errorf("the %s is longer than %d characters", what, limit)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
		ok := alnum
		if i > 0 {
			switch c {
			case '-':
				ok = true
			case '.':
				ok = what != "namespace"
			case ':':
				ok = what == "host"
			}
		}
		if !ok {
			return fmt.Errorf("the %s %q has a character %q that Ollama does not allow there", what, s, c)
		}
	}
	return nil
}

// String is the full name, host/namespace/model:tag.
func (n Name) String() string { return n.Host + "/" + n.Namespace + "/" + n.Model + ":" + n.Tag }

// Short is the name as Ollama displays it: phi3:mini for the library's
// models, namespace/model:tag or host/namespace/model:tag otherwise.
func (n Name) Short() string {
	switch {
	case !strings.EqualFold(n.Host, DefaultHost):
		return n.String()
	case !strings.EqualFold(n.Namespace, DefaultNamespace):
		return n.Namespace + "/" + n.Model + ":" + n.Tag
	}
	return n.Model + ":" + n.Tag
}

// ManifestPath is where the store under modelsDir keeps the manifest.
func (n Name) ManifestPath(modelsDir string) string {
	return filepath.Join(modelsDir, "manifests", n.Host, n.Namespace, n.Model, n.Tag)
}
