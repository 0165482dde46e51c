package finetune

import (
	"math"
	"slices"
	"testing"
)

// fullForwardNext re-runs the whole sequence through Logits (no cache) and
// returns the last position's logits.
func fullForwardNext(t *testing.T, m *Model, seq []int32) []float32 {
	t.Helper()
	pos := make([]int32, len(seq))
	for k := range pos {
		pos[k] = int32(k)
	}
	logits, err := m.Logits(&Batch{B: 1, S: len(seq), InputIDs: seq, PositionIDs: pos})
	if err != nil {
		t.Fatal(err)
	}
	V := m.Cfg.VocabSize
	return logits[(len(seq)-1)*V:]
}

func TestGenerateGreedyMatchesFullForward(t *testing.T) {
	for _, c := range []struct {
		name   string
		opts   ModelOptions
		window int
	}{
		{"base", ModelOptions{}, 0},
		{"nf4+lora", ModelOptions{Quantize: true, DoubleQuant: true, LoRA: allLinear(3, 6, 0.1)}, 0},
		{"lora+window", ModelOptions{LoRA: allLinear(2, 4, 0)}, 5},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := testBackend()
			m := testModel(t, b, c.opts)
			m.Cfg.SlidingWindow = c.window
			prompt := []int32{1, 7, 12, 3}
			got, err := m.Generate(prompt, GenerateOptions{MaxNewTokens: 10, IgnoreEOS: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 10 {
				t.Fatalf("%d tokens, want 10", len(got))
			}
			seq := slices.Clone(prompt)
			for n, tok := range got {
				logits := fullForwardNext(t, m, seq)
				want := sampleToken(logits, 0, 0, 0, 0)
				if tok != want {
					t.Fatalf("token %d: cached generation gave %d, full forward argmax %d (sequence %v)", n, tok, want, seq)
				}
				seq = append(seq, tok)
			}
			// The cache path computes the same numbers, not just the same argmax.
			g := m.newGenerator(len(seq))
			g.step(seq[:len(seq)-1], false)
			cached := g.step(seq[len(seq)-1:], true)
			g.free()
			full := fullForwardNext(t, m, seq)
			for k := range full {
				if cached[k] != full[k] {
					t.Fatalf("logit %d: cached %v, full %v", k, cached[k], full[k])
				}
			}
			if slices.Equal(got[:5], got[5:]) && got[0] == got[1] {
				t.Fatalf("degenerate generation %v: the test model should vary", got)
			}
		})
	}
}

func TestGenerateStopAndSampling(t *testing.T) {
	b := testBackend()
	m := testModel(t, b, ModelOptions{LoRA: allLinear(2, 4, 0)})
	prompt := []int32{1, 7, 12, 3}
	greedy, _ := m.Generate(prompt, GenerateOptions{MaxNewTokens: 8, IgnoreEOS: true})
	// Stop at the third greedy token: the two before it come back.
	stopped, err := m.Generate(prompt, GenerateOptions{MaxNewTokens: 8, StopIDs: []int32{greedy[2]}})
	if err != nil {
		t.Fatal(err)
	}
	first := slices.Index(greedy, greedy[2])
	if !slices.Equal(stopped, greedy[:first]) {
		t.Fatalf("stop id %d: got %v, want %v", greedy[2], stopped, greedy[:first])
	}
	// The config's EOS list is the default stop set.
	m.Cfg.EOSTokenIDs = []int{int(greedy[0])}
	if out, _ := m.Generate(prompt, GenerateOptions{MaxNewTokens: 8}); len(out) != 0 {
		t.Fatalf("EOS first: got %v", out)
	}
	// Sampling: reproducible for a seed, different across seeds, and
	// top_p tiny keeps only the argmax (greedy).
	s1, _ := m.Generate(prompt, GenerateOptions{MaxNewTokens: 12, Temperature: 1.5, Seed: 3, IgnoreEOS: true})
	s2, _ := m.Generate(prompt, GenerateOptions{MaxNewTokens: 12, Temperature: 1.5, Seed: 3, IgnoreEOS: true})
	s3, _ := m.Generate(prompt, GenerateOptions{MaxNewTokens: 12, Temperature: 1.5, Seed: 4, IgnoreEOS: true})
	if !slices.Equal(s1, s2) || slices.Equal(s1, s3) {
		t.Fatalf("sampling: seed 3 %v / %v, seed 4 %v", s1, s2, s3)
	}
	tp, _ := m.Generate(prompt, GenerateOptions{MaxNewTokens: 8, Temperature: 1, TopP: 1e-6, Seed: 9, IgnoreEOS: true})
	if !slices.Equal(tp, greedy) {
		t.Fatalf("top_p 1e-6 %v, greedy %v", tp, greedy)
	}
	for _, bad := range []GenerateOptions{{MaxNewTokens: -1}, {MaxNewTokens: 1, Temperature: -1}, {MaxNewTokens: 1, TopP: 2}} {
		if _, err := m.Generate(prompt, bad); err == nil {
			t.Fatalf("%+v accepted", bad)
		}
	}
	if _, err := m.Generate([]int32{99}, GenerateOptions{MaxNewTokens: 1}); err == nil {
		t.Fatal("out-of-vocabulary prompt accepted")
	}
}

func TestSampleTokenTopP(t *testing.T) {
	// probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 keeps the first two
	// (HF drops tokens whose ascending cumulative mass <= 0.25).
	logits := []float32{float32(math.Log(0.15)), float32(math.Log(0.5)), float32(math.Log(0.05)), float32(math.Log(0.3))}
	counts := map[int32]int{}
	for n := range uint64(4000) {
		counts[sampleToken(logits, 1, 0.75, 1, n)]++
	}
	if counts[0] != 0 || counts[2] != 0 {
		t.Fatalf("top_p 0.75 sampled a dropped token: %v", counts)
	}
	if f := float64(counts[1]) / 4000; math.Abs(f-0.5/0.8) > 0.03 {
		t.Fatalf("token 1 frequency %v, want %v", f, 0.5/0.8)
	}
	all := map[int32]int{}
	for n := range uint64(4000) {
		all[sampleToken(logits, 1, 0, 1, n)]++
	}
	if f := float64(all[2]) / 4000; math.Abs(f-0.05) > 0.015 {
		t.Fatalf("no top_p: token 2 frequency %v, want 0.05", f)
	}
}
