package ollamastore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Layer media types of an Ollama manifest.
const (
	MediaModel     = "application/vnd.ollama.image.model"
	MediaTemplate  = "application/vnd.ollama.image.template"
	MediaSystem    = "application/vnd.ollama.image.system"
	MediaParams    = "application/vnd.ollama.image.params"
	MediaLicense   = "application/vnd.ollama.image.license"
	MediaAdapter   = "application/vnd.ollama.image.adapter"
	MediaProjector = "application/vnd.ollama.image.projector"
	MediaTensor    = "application/vnd.ollama.image.tensor"
	MediaMessages  = "application/vnd.ollama.image.messages"
)

// Layer is one entry of a manifest.
type Layer struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	From      string `json:"from,omitempty"`
	Name      string `json:"name,omitempty"`
}

// Manifest is a model's manifest file.
type Manifest struct {
	SchemaVersion int     `json:"schemaVersion"`
	MediaType     string  `json:"mediaType"`
	Config        Layer   `json:"config"`
	Layers        []Layer `json:"layers"`
}

// Model is an Ollama model resolved to files on this machine.
type Model struct {
	Name Name
	// Via says how it was found: "store" (the manifest on disk) or "api"
	// (a running server's /api/show).
	Via string
	// ModelsDir is the store the files are in ("" when the server reported
	// blob paths outside any store this process can see).
	ModelsDir string
	// ManifestPath is the manifest file ("" via the API without a store).
	ManifestPath string
	// GGUF is the model blob: the file to read weights, tokenizer and chat
	// template from.
	GGUF string
	// GGUFSize is its size in bytes.
	GGUFSize int64
	// Template is Ollama's prompt template (Go text/template syntax), the
	// one `ollama run` uses; "" when the model has none.
	Template string
	// System is the default system message, "" if none.
	System string
	// Params are the model's default options (the params layer: stop,
	// temperature, num_ctx, ...), nil if none.
	Params map[string]any
	// License texts, in manifest order.
	License []string
	// Adapters and Projectors are the blob paths of further layers, which
	// training on this base cannot use (an adapter already applied on top
	// of the base, a vision projector).
	Adapters, Projectors []string
	// ModelInfo is /api/show's model_info (general.*, phi3.*, ...), nil
	// when resolved from the store.
	ModelInfo map[string]any
}

var digestRE = regexp.MustCompile(`^sha256[:-][0-9a-fA-F]{64}$`)

// BlobPath is where the store under modelsDir keeps the blob of digest
// ("sha256:HEX" becomes blobs/sha256-HEX).
func BlobPath(modelsDir, digest string) (string, error) {
	if !digestRE.MatchString(digest) {
		return "", fmt.Errorf("digest %q is not of the form sha256:<64 hex digits>", digest)
	}
	return filepath.Join(modelsDir, "blobs", strings.Replace(digest, ":", "-", 1)), nil
}

// ModelsDir is the store Ollama uses: $OLLAMA_MODELS, else ~/.ollama/models.
func ModelsDir() (string, error) {
	if d := strings.TrimSpace(os.Getenv("OLLAMA_MODELS")); d != "" {
		return d, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find Ollama's models folder: OLLAMA_MODELS is unset and the home folder is unknown: %w", err)
	}
	return filepath.Join(home, ".ollama", "models"), nil
}

// ErrNotInStore is wrapped when a store has no manifest for the name.
var ErrNotInStore = errors.New("no such model in the store")

// ReadManifest reads and checks the manifest of n in the store modelsDir.
func ReadManifest(modelsDir string, n Name) (*Manifest, string, error) {
	path := n.ManifestPath(modelsDir)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, path, fmt.Errorf("model %s: %w (no manifest at %s)", n.Short(), ErrNotInStore, path)
	}
	if err != nil {
		return nil, path, fmt.Errorf("model %s: read manifest: %w", n.Short(), err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, path, fmt.Errorf("model %s: manifest %s is not valid JSON: %w", n.Short(), path, err)
	}
	if len(m.Layers) == 0 {
		return nil, path, fmt.Errorf("model %s: manifest %s has no layers", n.Short(), path)
	}
	return &m, path, nil
}

// FromStore resolves n in the store modelsDir without a server.
func FromStore(modelsDir string, n Name) (*Model, error) {
	man, path, err := ReadManifest(modelsDir, n)
	if err != nil {
		return nil, err
	}
	m := &Model{Name: n, Via: "store", ModelsDir: modelsDir, ManifestPath: path}
	var tensors int
	for i, l := range man.Layers {
		blob, err := BlobPath(modelsDir, l.Digest)
		if err != nil {
			return nil, fmt.Errorf("model %s: manifest %s: layer %d (%s): %w", n.Short(), path, i, l.MediaType, err)
		}
		st, err := os.Stat(blob)
		if err != nil {
			return nil, fmt.Errorf("model %s: manifest %s: layer %d (%s): blob %s is missing (%w); pull the model again: ollama pull %s",
				n.Short(), path, i, l.MediaType, blob, err, n.Short())
		}
		if st.Size() != l.Size {
			return nil, fmt.Errorf("model %s: blob %s is %d bytes but the manifest says %d: an incomplete download? pull the model again: ollama pull %s",
				n.Short(), blob, st.Size(), l.Size, n.Short())
		}
		text := func() (string, error) {
			b, err := os.ReadFile(blob)
			if err != nil {
				return "", fmt.Errorf("model %s: read %s layer: %w", n.Short(), l.MediaType, err)
			}
			return string(b), nil
		}
		switch l.MediaType {
		case MediaModel:
			if m.GGUF != "" {
				return nil, fmt.Errorf("model %s: manifest %s has two model layers", n.Short(), path)
			}
			m.GGUF, m.GGUFSize = blob, st.Size()
		case MediaTemplate:
			if m.Template, err = text(); err != nil {
				return nil, err
			}
		case MediaSystem:
			if m.System, err = text(); err != nil {
				return nil, err
			}
		case MediaLicense:
			s, err := text()
			if err != nil {
				return nil, err
			}
			m.License = append(m.License, s)
		case MediaParams:
			s, err := text()
			if err != nil {
				return nil, err
			}
			if err := json.Unmarshal([]byte(s), &m.Params); err != nil {
				return nil, fmt.Errorf("model %s: params layer %s is not a JSON object: %w", n.Short(), blob, err)
			}
		case MediaAdapter:
			m.Adapters = append(m.Adapters, blob)
		case MediaProjector:
			m.Projectors = append(m.Projectors, blob)
		case MediaTensor:
			tensors++
		}
	}
	if m.GGUF == "" {
		if tensors > 0 {
			return nil, fmt.Errorf("model %s: manifest %s stores the weights as %d separate tensor layers (Ollama's safetensors-based format), not as a GGUF; train from the Hugging Face checkpoint instead, or use a GGUF model", n.Short(), path, tensors)
		}
		return nil, fmt.Errorf("model %s: manifest %s has no model layer (%s)", n.Short(), path, MediaModel)
	}
	if err := checkGGUF(m.GGUF, n); err != nil {
		return nil, err
	}
	return m, nil
}

// checkGGUF makes sure the model blob starts like a GGUF file, so that a
// foreign format is named here rather than as a parse error later.
func checkGGUF(path string, n Name) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("model %s: open model blob: %w", n.Short(), err)
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || string(magic[:]) != "GGUF" {
		return fmt.Errorf("model %s: model blob %s is not a GGUF file (it starts with %q); only GGUF models can be trained on", n.Short(), path, magic[:])
	}
	return nil
}
