package finetune

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/ollama-tune/ollama-tune/finetune/peft"
)

// The outputs of a finished run, in output_dir:
//
//	adapter_model.safetensors, adapter_config.json   the adapter (PEFT 0.21 format;
//	                     the bytes of the checkpoint saved at the last step,
//	                     where there is one: finalAdapterFiles)
//	tokenizer files      copied from the model folder (what the Trainer saves
//	                     with its processing_class)
//	README.md            model card: base, data, settings, final losses
//	metrics.jsonl        one JSON object per log and evaluation, then the summary
//	loss.png             training and evaluation loss per step
//	training_config.json the job's configuration
//
// They are written only after training has succeeded, all or nothing
// (peft.WriteFiles): every file is first written in full under a temporary
// name (into a fresh temporary folder renamed to output_dir when output_dir
// does not exist yet, else beside its final name), synced, and only when
// all of them are complete are they renamed into place. A failure while
// writing (a full disk) removes the temporaries and leaves what was in
// output_dir before untouched; nothing else of output_dir is removed or
// rewritten (checkpoint-N folders stay, as the Trainer leaves them).

// TokenizerFiles are the files copied from the model folder when present.
var TokenizerFiles = []string{
	"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
	"added_tokens.json", "chat_template.jinja",
}

// copyFrom writes the bytes of the file at src (a stageFile body).
func copyFrom(src string) func(w io.Writer) error {
	return func(w io.Writer) error {
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(w, f)
		return err
	}
}

// writeOutputs writes the final files of a run.
func (tr *trainer) writeOutputs(res *Result) error {
	out := tr.job.outputDir()
	files, err := tr.finalAdapterFiles()
	if err != nil {
		return fmt.Errorf("write outputs to %s: %w", out, err)
	}
	for _, name := range TokenizerFiles {
		if tr.job.ModelDir == "" {
			break // a GGUF base: its tokenizer is inside the blob
		}
		src := filepath.Join(tr.job.ModelDir, name)
		if _, err := os.Stat(src); errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			return fmt.Errorf("write outputs: %w", err)
		}
		files = append(files, tr.stageFile(name, copyFrom(src)))
	}
	card := ModelCard(tr.job, res)
	files = append(files,
		tr.stageFile("README.md", func(w io.Writer) error { _, err := io.WriteString(w, card); return err }),
		tr.stageFile("metrics.jsonl", func(w io.Writer) error { return WriteMetrics(w, res.History) }),
		tr.stageFile("loss.png", func(w io.Writer) error { return PlotLoss(w, res.History, tr.job.Config.Model) }),
		tr.stageFile(trainConfigFile, jsonFile(tr.cfg)),
	)
	if err := peft.WriteFiles(out, files); err != nil {
		return fmt.Errorf("write outputs to %s (nothing was changed there): %w", out, err)
	}
	return nil
}

// WriteMetrics writes the log history as JSON lines.
func WriteMetrics(w io.Writer, history []LogEntry) error {
	enc := json.NewEncoder(w)
	for _, e := range history {
		if err := enc.Encode(e); err != nil {
			return err
		}
	}
	return nil
}

// PlotLoss draws the training loss of each log and the evaluation loss of
// each evaluation against the step, as a PNG.
func PlotLoss(w io.Writer, history []LogEntry, title string) error {
	var train, eval plotter.XYs
	for _, e := range history {
		if e.Loss != nil {
			train = append(train, plotter.XY{X: float64(e.Step), Y: *e.Loss})
		}
		if e.EvalLoss != nil {
			eval = append(eval, plotter.XY{X: float64(e.Step), Y: *e.EvalLoss})
		}
	}
	p := plot.New()
	p.Title.Text = "Loss: " + title
	p.X.Label.Text = "step"
	p.Y.Label.Text = "loss"
	p.Add(plotter.NewGrid())
	add := func(xys plotter.XYs, name string, c color.Color, dashed bool) error {
		if len(xys) == 0 {
			return nil
		}
		l, s, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		l.Color, s.Color = c, c
		s.Shape = draw.CircleGlyph{}
		s.Radius = vg.Points(2)
		if dashed {
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
		}
		p.Add(l, s)
		p.Legend.Add(name, l, s)
		return nil
	}
	if err := add(train, "train", color.RGBA{R: 31, G: 119, B: 180, A: 255}, false); err != nil {
		return err
	}
	if err := add(eval, "eval", color.RGBA{R: 255, G: 127, B: 14, A: 255}, true); err != nil {
		return err
	}
	p.Legend.Top = true
	p.Y.Min = 0
	wt, err := p.WriterTo(8*vg.Inch, 5*vg.Inch, "png")
	if err != nil {
		return err
	}
	_, err = wt.WriteTo(w)
	return err
}

// ModelCard is the README.md of an adapter: YAML front matter as PEFT's
// model cards have it, then the base model, the data, the settings and
// the results.
func ModelCard(job *Job, res *Result) string {
	c := job.Config
	t := c.Training
	p := res.Plan
	var b strings.Builder
	fmt.Fprintf(&b, "---\nbase_model: %s\nlibrary_name: peft\npipeline_tag: text-generation\ntags:\n- base_model:adapter:%s\n- lora\n- sft\n- ollama-tune\n---\n\n", yamlString(c.Model), c.Model)
	fmt.Fprintf(&b, "# %s\n\n", filepath.Base(filepath.Clean(t.OutputDir)))
	fmt.Fprintf(&b, "A LoRA adapter for [%s](%s), trained by supervised fine-tuning with ollama-tune.\n\n", c.Model, modelLink(c.Model))
	b.WriteString("## Data\n\n")
	fmt.Fprintf(&b, "- data set: `%s`", c.Dataset.Path)
	if c.Dataset.Split != "" {
		fmt.Fprintf(&b, " (split `%s`)", c.Dataset.Split)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "- %d training examples", p.Data.Examples)
	if p.EvalExamples > 0 {
		fmt.Fprintf(&b, ", %d held out for evaluation", p.EvalExamples)
	}
	fmt.Fprintf(&b, "; %d tokens in %d sequences", p.Data.Tokens, p.Data.Sequences)
	if t.Packing {
		fmt.Fprintf(&b, " (packed, %s, max_seq_length %d)", orDefault(t.PackingStrategy, "bfd"), t.MaxSeqLength)
	} else {
		fmt.Fprintf(&b, " (max_seq_length %d)", t.MaxSeqLength)
	}
	b.WriteString("\n\n## Settings\n\n| setting | value |\n|---|---|\n")
	q := c.Quantization
	row := func(k string, v any) { fmt.Fprintf(&b, "| %s | %v |\n", k, v) }
	if q.LoadIn4bit {
		row("quantization", fmt.Sprintf("4-bit %s, double quant %v, compute %s", q.Bnb4bitQuantType, q.Bnb4bitUseDoubleQuant, q.Bnb4bitComputeDType))
	} else {
		row("quantization", "none")
	}
	row("LoRA", fmt.Sprintf("r %d, alpha %g, dropout %g, targets %s", c.LoRA.R, c.LoRA.LoRAAlpha, c.LoRA.LoRADropout, strings.Join(c.LoRA.TargetModulesResolved(), ", ")))
	row("trainable parameters", fmt.Sprintf("%d of %d", p.TrainableParams, p.TotalParams))
	row("batch", fmt.Sprintf("%d x %d gradient accumulation", t.PerDeviceTrainBatchSize, t.GradientAccumulationSteps))
	row("steps", fmt.Sprintf("%d (%g epochs, %d warm-up)", p.TotalSteps, p.Epochs, p.WarmupSteps))
	row("learning rate", fmt.Sprintf("%g, %s schedule", t.LearningRate, t.LRSchedulerType))
	row("optimizer", fmt.Sprintf("%s, weight decay %g, max_grad_norm %g", t.Optim, t.WeightDecay, t.MaxGradNorm))
	row("gradient checkpointing", t.GradientCheckpointing)
	row("seed", t.Seed)
	b.WriteString("\n## Results\n\n")
	fmt.Fprintf(&b, "- final training loss: %s (step %d)\n", fmtLoss(res.FinalLoss), res.Steps)
	if !isNaN(res.FinalEvalLoss) {
		fmt.Fprintf(&b, "- final evaluation loss: %s\n", fmtLoss(res.FinalEvalLoss))
	}
	fmt.Fprintf(&b, "- mean training loss of the run: %s\n\n", fmtLoss(res.TrainLoss))
	b.WriteString("| step | epoch | training loss | evaluation loss |\n|---|---|---|---|\n")
	for _, e := range res.History {
		if e.Loss == nil && e.EvalLoss == nil {
			continue
		}
		tl, el := "", ""
		if e.Loss != nil {
			tl = fmtLoss(*e.Loss)
		}
		if e.EvalLoss != nil {
			el = fmtLoss(*e.EvalLoss)
		}
		fmt.Fprintf(&b, "| %d | %.2f | %s | %s |\n", e.Step, e.Epoch, tl, el)
	}
	b.WriteString("\n![loss](loss.png)\n\n## Use\n\n```python\nfrom transformers import AutoModelForCausalLM\nfrom peft import PeftModel\n\n")
	fmt.Fprintf(&b, "base = AutoModelForCausalLM.from_pretrained(%q)\nmodel = PeftModel.from_pretrained(base, %q)\n```\n", c.Model, filepath.Base(filepath.Clean(t.OutputDir)))
	return b.String()
}

func modelLink(model string) string {
	if hubIDPattern.MatchString(model) {
		if _, err := os.Stat(model); err != nil {
			return "https://huggingface.co/" + model
		}
	}
	return model
}

func yamlString(s string) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.Encode(s)
	return strings.TrimSpace(buf.String())
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func fmtLoss(f float64) string {
	if isNaN(f) {
		return "n/a"
	}
	return fmt.Sprintf("%.4f", f)
}

func isNaN(f float64) bool { return f != f }
