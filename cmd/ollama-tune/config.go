package main

// Loading a fine-tune's configuration: DefaultTrainConfig, then a YAML (or
// JSON/TOML) file, then OLLAMA_TUNE_* environment variables, then flags;
// each layer wins over the ones before it. viper reads the file and the
// environment; mapstructure (viper's decoder) fills finetune.TrainConfig.
//
// What viper does not do for us, done here:
//   - unknown keys: viper accepts any key; a typo would silently keep the
//     default. Every key of the file, of --set and of OLLAMA_TUNE_<GROUP>_*
//     must name a field of TrainConfig, or loading fails naming the key and
//     the nearest real one.
//   - column names: viper lowercases every map key it reads, but the keys
//     of dataset.rename are data set column names, which are case
//     sensitive; map-valued keys are therefore taken from the file as
//     written.
//   - defaults: viper merges a default map with the file's map key by key;
//     a rename map in the file must replace the default mapping, not add to
//     it. So viper holds no defaults: its settings are decoded on top of
//     DefaultTrainConfig, with ZeroFields so a key that is set replaces the
//     default's value (map or list) wholesale.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	yaml "go.yaml.in/yaml/v3"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// envPrefix starts every environment variable that sets a config key:
// OLLAMA_TUNE_TRAINING_LEARNING_RATE sets training.learning_rate.
const envPrefix = "OLLAMA_TUNE_"

// configSchema lists the keys of finetune.TrainConfig, from its mapstructure
// tags.
type configSchema struct {
	leaves map[string]reflect.Type // dotted key -> field type (maps included)
	groups map[string]bool         // keys of nested structs (model has none; training has many)
	order  []string                // leaves in declaration order
}

var trainSchema = newConfigSchema(reflect.TypeOf(finetune.TrainConfig{}))

func newConfigSchema(t reflect.Type) *configSchema {
	s := &configSchema{leaves: map[string]reflect.Type{}, groups: map[string]bool{}}
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
			if name == "" || name == "-" {
				continue
			}
			key := prefix + name
			if f.Type.Kind() == reflect.Struct {
				s.groups[key] = true
				walk(f.Type, key+".")
				continue
			}
			s.leaves[key] = f.Type
			s.order = append(s.order, key)
		}
	}
	walk(t, "")
	return s
}

// isMap reports whether key holds a map (dataset.rename).
func (s *configSchema) isMap(key string) bool {
	t, ok := s.leaves[key]
	return ok && t.Kind() == reflect.Map
}

// mapParent returns the map-valued key that key is an entry of
// ("dataset.rename" for "dataset.rename.sentence").
func (s *configSchema) mapParent(key string) (string, bool) {
	for i := strings.LastIndexByte(key, '.'); i > 0; i = strings.LastIndexByte(key[:i], '.') {
		if s.isMap(key[:i]) {
			return key[:i], true
		}
	}
	return "", false
}

// check says what is wrong with a key read from a file or a flag, or nil.
func (s *configSchema) check(key string) error {
	if _, ok := s.leaves[key]; ok {
		return nil
	}
	if _, ok := s.mapParent(key); ok {
		return nil
	}
	if s.groups[key] {
		return fmt.Errorf("key %q is a group of settings, not a value; set its keys (%s)", key, strings.Join(s.childrenOf(key), ", "))
	}
	msg := fmt.Sprintf("unknown key %q", key)
	if near := s.nearest(key); near != "" {
		msg += fmt.Sprintf("; did you mean %q?", near)
	} else {
		msg += "; the groups are model, quantization, lora, dataset, training and device (see examples/yoda.yaml)"
	}
	return errors.New(msg)
}

func (s *configSchema) childrenOf(group string) []string {
	var out []string
	for _, k := range s.order {
		if strings.HasPrefix(k, group+".") {
			out = append(out, k[len(group)+1:])
		}
	}
	return out
}

// nearest is the known key closest to a mistyped one: the same last
// component under another group (training.r -> lora.r), else the smallest
// edit distance if it is small.
func (s *configSchema) nearest(key string) string {
	leaf := key[strings.LastIndexByte(key, '.')+1:]
	for _, k := range s.order {
		if k[strings.LastIndexByte(k, '.')+1:] == leaf {
			return k
		}
	}
	best, bestD := "", 4
	for _, k := range s.order {
		if d := editDistance(key, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// envName is the environment variable of a key.
func envName(key string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// configSources are the inputs of one configuration.
type configSources struct {
	File string   // config file, "" for none
	Sets []string // --set key=value, in order
	// Flags are the named flags the user gave (--model, --output-dir, ...),
	// as key -> value; they win over Sets.
	Flags map[string]string
	// Environ is the environment (os.Environ() outside tests).
	Environ []string
}

// loadTrainConfig builds the configuration from its sources and validates
// it.
func loadTrainConfig(src configSources) (finetune.TrainConfig, error) {
	cfg, err := decodeTrainConfig(src)
	if err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("invalid configuration%s:\n%w", fromFile(src.File), indentErr(err))
	}
	return cfg, nil
}

func configWhere(file string) string {
	if file == "" {
		return "config"
	}
	return "config " + file
}

func fromFile(file string) string {
	if file == "" {
		return ""
	}
	return " (" + file + ")"
}

// indentErr puts each line of a joined error on its own indented line.
func indentErr(err error) error {
	lines := strings.Split(err.Error(), "\n")
	return errors.New("  " + strings.Join(lines, "\n  "))
}

// decodeTrainConfig layers the sources over DefaultTrainConfig, without
// validating the values.
func decodeTrainConfig(src configSources) (finetune.TrainConfig, error) {
	cfg := finetune.DefaultTrainConfig()
	s := trainSchema
	v := viper.New()

	// 1. The file.
	var raw map[string]any // the file as written (map keys keep their case)
	if src.File != "" {
		v.SetConfigFile(src.File)
		switch strings.ToLower(filepath.Ext(src.File)) {
		case ".yaml", ".yml", ".json", ".toml":
		default:
			v.SetConfigType("yaml")
		}
		if err := v.ReadInConfig(); err != nil {
			return cfg, fmt.Errorf("read config %s: %w", src.File, err)
		}
		var bad []string
		for _, k := range v.AllKeys() {
			if err := s.check(k); err != nil {
				bad = append(bad, err.Error())
			}
		}
		if len(bad) > 0 {
			sort.Strings(bad)
			return cfg, fmt.Errorf("config %s: %s", src.File, strings.Join(bad, "\n  "))
		}
		raw = readRawConfig(src.File)
	}

	// 2. The environment: every key has its variable. A variable under a
	// config group that names no key is a typo, reported as such; other
	// OLLAMA_TUNE_* variables (OLLAMA_TUNE_PLUGINS, OLLAMA_TUNE_LOG) are
	// not config keys.
	env := map[string]string{} // variable -> key
	for _, k := range s.order {
		env[envName(k)] = k
		if err := v.BindEnv(k, envName(k)); err != nil {
			return cfg, err
		}
	}
	for _, kv := range src.Environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, envPrefix) || env[name] != "" {
			continue
		}
		rest := strings.ToLower(strings.TrimPrefix(name, envPrefix))
		for g := range s.groups {
			if strings.HasPrefix(rest, g+"_") {
				guess := g + "." + strings.TrimPrefix(rest, g+"_")
				msg := fmt.Sprintf("environment variable %s names no config key", name)
				if near := s.nearest(guess); near != "" {
					msg += fmt.Sprintf("; did you mean %s (%s)?", envName(near), near)
				}
				return cfg, errors.New(msg)
			}
		}
	}

	// 3. Flags: --set key=value, then the named flags.
	mapSets := map[string]map[string]string{} // map key -> entries set one by one
	for _, kv := range src.Sets {
		key, val, ok := strings.Cut(kv, "=")
		key = strings.TrimSpace(key)
		if !ok || key == "" {
			return cfg, fmt.Errorf("--set %q: want key=value, e.g. --set training.learning_rate=2e-4", kv)
		}
		lkey := strings.ToLower(key)
		if err := s.check(lkey); err != nil {
			return cfg, fmt.Errorf("--set %s: %w", key, err)
		}
		if parent, ok := s.mapParent(lkey); ok {
			// dataset.rename.Sentence=prompt: the column keeps its case.
			if mapSets[parent] == nil {
				mapSets[parent] = map[string]string{}
			}
			mapSets[parent][key[len(parent)+1:]] = val
			continue
		}
		v.Set(lkey, val)
	}
	for key, val := range src.Flags {
		v.Set(key, val)
	}

	// Assemble the settings: every key that some layer sets.
	settings := map[string]any{}
	for _, k := range s.order {
		var val any
		switch {
		case s.isMap(k):
			m, set, err := mapSetting(v, k, raw, mapSets[k])
			if err != nil {
				return cfg, err
			}
			if !set {
				continue
			}
			val = m
		case v.IsSet(k):
			val = v.Get(k)
		default:
			continue
		}
		putPath(settings, k, val)
	}

	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result:           &cfg,
		ErrorUnused:      true, // UnmarshalExact: a key with no field is an error
		ZeroFields:       true, // a set list or map replaces the default's
		WeaklyTypedInput: true, // environment and flag values are strings
		DecodeHook:       mapstructure.ComposeDecodeHookFunc(stringToListHook, stringToMapHook),
	})
	if err != nil {
		return cfg, err
	}
	if err := dec.Decode(settings); err != nil {
		return cfg, fmt.Errorf("%s: %s", configWhere(src.File), describeDecodeError(err, settings))
	}
	return cfg, nil
}

// mapSetting finds the value of a map-valued key: the file's (as written),
// replaced by the environment's or a --set of the whole map, then updated
// by --set entries.
func mapSetting(v *viper.Viper, key string, raw map[string]any, entries map[string]string) (map[string]string, bool, error) {
	var m map[string]string
	set := false
	if fileVal, ok := lookupPath(raw, key); ok {
		var err error
		if m, err = toStringMap(fileVal); err != nil {
			return nil, false, fmt.Errorf("config key %q: %w", key, err)
		}
		set = true
	}
	// A string is the environment's value or a --set of the whole map
	// (a map from the file comes back from viper as a map, lowercased).
	if str, ok := v.Get(key).(string); ok {
		var err error
		if m, err = parseStringMap(str); err != nil {
			return nil, false, fmt.Errorf("config key %q: %w", key, err)
		}
		set = true
	}
	if len(entries) > 0 {
		if m == nil {
			m = defaultMap(key)
		}
		for k, val := range entries {
			m[k] = val
		}
		set = true
	}
	return m, set, nil
}

// readRawConfig reads the file again without viper's lowercasing; nil when
// it is not YAML or JSON (viper has already reported a file it cannot read).
func readRawConfig(path string) map[string]any {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var m map[string]any
	if yaml.Unmarshal(b, &m) != nil {
		return nil
	}
	return m
}

// lookupPath finds a dotted key in a nested map, matching each part
// without regard to case (as viper does).
func lookupPath(m map[string]any, key string) (any, bool) {
	parts := strings.Split(key, ".")
	var cur any = m
	for _, p := range parts {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		found := false
		for k, val := range mm {
			if strings.EqualFold(k, p) {
				cur, found = val, true
				break
			}
		}
		if !found {
			return nil, false
		}
	}
	return cur, true
}

func putPath(m map[string]any, key string, val any) {
	parts := strings.Split(key, ".")
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = val
}

// toStringMap converts a map read from YAML/JSON to map[string]string.
func toStringMap(v any) (map[string]string, error) {
	switch m := v.(type) {
	case nil:
		return map[string]string{}, nil
	case map[string]any:
		out := make(map[string]string, len(m))
		for k, val := range m {
			switch x := val.(type) {
			case string:
				out[k] = x
			case nil:
				return nil, fmt.Errorf("entry %q has no value; write %s: NEW_NAME", k, k)
			default:
				out[k] = fmt.Sprint(x)
			}
		}
		return out, nil
	case string:
		return parseStringMap(m)
	}
	return nil, fmt.Errorf("want a mapping of column names (old: new), got %v", v)
}

// parseStringMap parses "a=b,c=d" (or "a:b,c:d", optionally in braces).
func parseStringMap(s string) (map[string]string, error) {
	s = strings.TrimSpace(s)
	s = strings.TrimSuffix(strings.TrimPrefix(s, "{"), "}")
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		k, val, ok := strings.Cut(part, "=")
		if !ok {
			k, val, ok = strings.Cut(part, ":")
		}
		k, val = unquote(strings.TrimSpace(k)), unquote(strings.TrimSpace(val))
		if !ok || k == "" {
			return nil, fmt.Errorf("entry %q: want old=new, e.g. sentence=prompt,translation_extra=completion", part)
		}
		out[k] = val
	}
	return out, nil
}

// parseList parses "a,b,c" or "[a, b, c]" (quotes around items allowed).
func parseList(s string) []string {
	s = strings.TrimSpace(s)
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if strings.TrimSpace(s) == "" {
		return []string{}
	}
	var out []string
	for _, p := range strings.Split(s, ",") {
		out = append(out, unquote(strings.TrimSpace(p)))
	}
	return out
}

func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}

// stringToListHook turns an environment or flag string into a list.
func stringToListHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() == reflect.String && to.Kind() == reflect.Slice && to.Elem().Kind() == reflect.String {
		return parseList(data.(string)), nil
	}
	return data, nil
}

// stringToMapHook turns "a=b,c=d" into a map.
func stringToMapHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() == reflect.String && to.Kind() == reflect.Map {
		return parseStringMap(data.(string))
	}
	return data, nil
}

var cannotParse = regexp.MustCompile(`'([^']+)' cannot parse value as '([^']+)'`)

// describeDecodeError makes mapstructure's errors name the dotted key, the
// value given and the type wanted.
func describeDecodeError(err error, settings map[string]any) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "decoding failed due to the following error(s):\n\n")
	var lines []string
	for _, l := range strings.Split(msg, "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "*"))
		if l == "" {
			continue
		}
		if m := cannotParse.FindStringSubmatch(l); m != nil {
			val, _ := lookupPath(settings, m[1])
			l = fmt.Sprintf("config key %q: %q is not a valid %s", m[1], fmt.Sprint(val), typeWords(m[2]))
		}
		lines = append(lines, l)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n  ")
}

func typeWords(goType string) string {
	switch {
	case strings.HasPrefix(goType, "float"):
		return "number (e.g. 3e-4)"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "whole number"
	case goType == "bool":
		return "boolean (true or false)"
	}
	return goType
}

// defaultMap is DefaultTrainConfig's value of a map-valued key, copied.
func defaultMap(key string) map[string]string {
	v := reflect.ValueOf(finetune.DefaultTrainConfig())
	for _, part := range strings.Split(key, ".") {
		t := v.Type()
		found := false
		for i := 0; i < t.NumField(); i++ {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("mapstructure"), ",")
			if name == part {
				v, found = v.Field(i), true
				break
			}
		}
		if !found {
			return map[string]string{}
		}
	}
	out := map[string]string{}
	if m, ok := v.Interface().(map[string]string); ok {
		for k, val := range m {
			out[k] = val
		}
	}
	return out
}

// ---- the flags that load a configuration ----

// configFlags are the flags every command that reads a fine-tune's
// configuration takes.
type configFlags struct {
	file      string
	sets      []string
	outputDir string
	model     string
	device    string
	maxSteps  int
	cmd       *cobra.Command
}

// addConfigFlags registers --config, --set and the common shortcuts on cmd.
func addConfigFlags(cmd *cobra.Command) *configFlags {
	f := &configFlags{cmd: cmd}
	fl := cmd.Flags()
	fl.StringVarP(&f.file, "config", "c", "", "fine-tune configuration (YAML), e.g. examples/yoda.yaml; OLLAMA_TUNE_<GROUP>_<KEY> variables and flags override it")
	fl.StringArrayVar(&f.sets, "set", nil, "set a config key, e.g. --set training.learning_rate=2e-4 (repeatable; lists as a,b; maps as old=new,...)")
	fl.StringVar(&f.outputDir, "output-dir", "", "training.output_dir: where the adapter is written")
	fl.StringVar(&f.model, "model", "", "model: a Hugging Face repo id, a local model directory, or ollama://NAME (a model Ollama has)")
	fl.StringVar(&f.device, "device", "", "device: auto, cpu or cuda")
	fl.IntVar(&f.maxSteps, "max-steps", 0, "training.max_steps: stop after this many optimizer steps (overrides num_train_epochs)")
	return f
}

func (f *configFlags) sources() configSources {
	src := configSources{File: f.file, Sets: f.sets, Flags: map[string]string{}, Environ: os.Environ()}
	changed := func(name string) bool { return f.cmd.Flags().Changed(name) }
	if changed("output-dir") {
		src.Flags["training.output_dir"] = f.outputDir
	}
	if changed("model") {
		src.Flags["model"] = f.model
	}
	if changed("device") {
		src.Flags["device"] = f.device
	}
	if changed("max-steps") {
		src.Flags["training.max_steps"] = strconv.Itoa(f.maxSteps)
	}
	return src
}

// load reads and validates the configuration.
func (f *configFlags) load() (finetune.TrainConfig, error) {
	return loadTrainConfig(f.sources())
}
