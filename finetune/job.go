package finetune

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sync"

	"github.com/ollama-tune/ollama-tune/finetune/chat"
	"github.com/ollama-tune/ollama-tune/finetune/hub"
	"github.com/ollama-tune/ollama-tune/finetune/ollamastore"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

// A Job is one fine-tune with its inputs resolved: the validated
// configuration, the base model as a local folder (or the GGUF blob of an
// Ollama model, job_ollama.go), its tokenizer and chat template, and how
// to make the backend. NewJob builds it from a
// TrainConfig; Plan and Train run it.

// BackendFactory makes the backend a job trains on, for the compute dtype
// the config asks for (bnb_4bit_compute_dtype). The CPU plugin passes
// CPUBackendFactory; the CUDA plugin its own.
type BackendFactory func(compute DType) (Backend, error)

// CPUBackendFactory is the BackendFactory of the CPU reference backend.
func CPUBackendFactory(compute DType) (Backend, error) {
	opts := CPUOptions{ComputeDType: compute}
	if err := CheckCPUOptions(opts); err != nil {
		return nil, err
	}
	return NewCPUBackend(opts), nil
}

// ResumeLatest asks Train to continue from the newest checkpoint in the
// output folder.
const ResumeLatest = "latest"

// Job is a resolved fine-tuning job.
type Job struct {
	Config   TrainConfig
	ModelDir string // local folder: config.json, safetensors weights, tokenizer files ("" for an Ollama model)
	// GGUF is the base's GGUF blob when the model is ollama://NAME, and
	// Ollama the model it was resolved from (nil otherwise).
	GGUF      string
	Ollama    *ollamastore.Model
	Tokenizer *tokenizer.Tokenizer
	Template  *chat.Template // nil when the tokenizer has no chat template (plain-text training)
	// NewBackend makes the backend; nil means CPUBackendFactory.
	NewBackend BackendFactory
	// Hub resolves Hub data set ids; nil creates a client from the
	// environment (HF_HOME, HF_TOKEN, HF_HUB_OFFLINE) when one is needed.
	Hub *hub.Client
	// Resume is "" (start fresh), ResumeLatest, or a checkpoint folder.
	Resume string
	// SaveOnCancel says whether a cancelled run saves a checkpoint before
	// it returns (the plugin asks plugin.SaveCheckpointOnCancel); nil
	// means always.
	SaveOnCancel func(ctx context.Context) bool
	// DeviceName names the device in the Started event ("cpu" when empty).
	DeviceName string

	// wrapWriter, when set, wraps every file Train writes (tests simulate
	// a full disk with it).
	wrapWriter func(name string, w io.Writer) io.Writer

	// Of a GGUF base, read by NewJob: its configuration, the bytes of its
	// decoder linears and its general.file_type.
	ggufConfig      *Config
	ggufLinearBytes int64
	ggufFileType    string
	// serving checks the data's first prompts against the Ollama TEMPLATE.
	serving *servingCheck
}

// JobOptions are what NewJob needs besides the configuration.
type JobOptions struct {
	NewBackend   BackendFactory
	Hub          *hub.Client // nil: from the environment, when needed
	Resume       string
	SaveOnCancel func(ctx context.Context) bool
	DeviceName   string
	// Log receives status lines while the job is resolved (downloads);
	// nil discards them.
	Log func(msg string)
	// Ollama finds ollama://NAME models; nil uses the store in
	// OLLAMA_MODELS (default ~/.ollama/models), then the server at
	// OLLAMA_HOST.
	Ollama *ollamastore.Resolver
}

var hubIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$`)

// NewJob validates cfg and resolves its inputs: the model folder (a local
// folder, or a Hugging Face model id fetched into the Hub cache), the
// tokenizer and chat template found in it; or, for ollama://NAME, the
// model's GGUF blob with its tokenizer and chat template (job_ollama.go).
// The data set is read by Plan and Train.
func NewJob(ctx context.Context, cfg TrainConfig, opts JobOptions) (*Job, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	j := &Job{
		Config: cfg, NewBackend: opts.NewBackend, Hub: opts.Hub, Resume: opts.Resume,
		SaveOnCancel: opts.SaveOnCancel, DeviceName: opts.DeviceName,
	}
	if IsOllamaModel(cfg.Model) {
		if err := j.resolveOllama(ctx, opts.Ollama, opts.Log); err != nil {
			return nil, err
		}
		return j, nil
	}
	dir, err := j.resolveModel(ctx, opts.Log)
	if err != nil {
		return nil, err
	}
	j.ModelDir = dir
	if err := j.loadTokenizer(); err != nil {
		return nil, err
	}
	return j, nil
}

// resolveModel finds the model folder: cfg.Model as a local folder, else
// as a Hub model id (downloading config, weights and tokenizer files).
func (j *Job) resolveModel(ctx context.Context, log func(string)) (string, error) {
	name := j.Config.Model
	st, err := os.Stat(name)
	switch {
	case err == nil && st.IsDir():
		return name, nil
	case err == nil:
		return "", &ConfigError{Key: "model", Problem: fmt.Sprintf("%s is a file; give the model folder that holds config.json and the safetensors weights", name)}
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("model %s: %w", name, err)
	case !hubIDPattern.MatchString(name):
		return "", &ConfigError{Key: "model", Problem: fmt.Sprintf("%s: no such folder, and not a Hugging Face model id (owner/name)", name)}
	}
	c, err := j.hubClient()
	if err != nil {
		return "", err
	}
	if log != nil {
		log(fmt.Sprintf("fetching %s from the Hugging Face Hub into %s", name, c.CacheDir))
	}
	dir, err := c.Snapshot(ctx, hub.Model, name, "", []string{"*.json", "*.safetensors", "tokenizer.model", "*.jinja"})
	if err != nil {
		return "", fmt.Errorf("model %s: %w", name, err)
	}
	return dir, nil
}

var hubFromEnv struct {
	once sync.Once
	c    *hub.Client
	err  error
}

func (j *Job) hubClient() (*hub.Client, error) {
	if j.Hub != nil {
		return j.Hub, nil
	}
	hubFromEnv.once.Do(func() { hubFromEnv.c, hubFromEnv.err = hub.NewFromEnv() })
	if hubFromEnv.err != nil {
		return nil, fmt.Errorf("hugging face hub: %w", hubFromEnv.err)
	}
	j.Hub = hubFromEnv.c
	return j.Hub, nil
}

// DatasetFiles implements data.Resolver through the job's Hub client,
// created on first use.
func (j *Job) DatasetFiles(ctx context.Context, repoID, split string) ([]string, error) {
	c, err := j.hubClient()
	if err != nil {
		return nil, err
	}
	return c.DatasetFiles(ctx, repoID, split)
}

// loadTokenizer reads the tokenizer and chat template of the model folder.
func (j *Job) loadTokenizer() error {
	tok, err := tokenizer.Load(j.ModelDir)
	if err != nil {
		return fmt.Errorf("model %s: %w (the model folder must hold the tokenizer files: tokenizer.json or tokenizer.model, tokenizer_config.json)", j.ModelDir, err)
	}
	j.Tokenizer = tok
	t, err := chat.FromTokenizerDir(j.ModelDir)
	if errors.Is(err, chat.ErrNoTemplate) {
		return nil // a base model's tokenizer: plain-text examples
	}
	if err != nil {
		return fmt.Errorf("model %s: chat template: %w", j.ModelDir, err)
	}
	j.Template = t
	return nil
}

func (j *Job) backend() (Backend, error) {
	f := j.NewBackend
	if f == nil {
		f = CPUBackendFactory
	}
	b, err := f(j.Config.Quantization.ComputeDType())
	if err != nil {
		return nil, fmt.Errorf("backend: %w", err)
	}
	return b, nil
}

// modelSource names where the base's weights are: the model folder, or
// the GGUF blob.
func (j *Job) modelSource() string {
	if j.GGUF != "" {
		return j.GGUF
	}
	return j.ModelDir
}

// outputDir is the configured output folder.
func (j *Job) outputDir() string { return filepath.Clean(j.Config.Training.OutputDir) }
