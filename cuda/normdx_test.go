//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// TestDeferLoRADx: a normed linear's LoRA input-gradient term deferred to
// the RMSNorm backward (normdx.go, rmsnorm_bwd_lora8) must give the two
// launches' d residual bit for bit: with and without dropout, into a
// pending Zero and accumulating, at Phi-3-mini's width (three vectors a
// thread, all kept in registers) and a wider one (some recomputed). Read
// any other way first, the deferred gradient must be the whole one, and
// after the fused backward a read of it must fail rather than return the
// gradient without its term. Where the kernel cannot take the shapes
// (rank 5; a width not a multiple of 4) nothing is deferred.
func TestDeferLoRADx(t *testing.T) {
	g := gpuB16
	for _, c := range []struct {
		T, C, out, r int
		p            float32
		defers       bool
	}{
		{40, 3072, 96, 8, 0.05, true},
		{40, 3072, 96, 8, 0, true},
		{17, 5120, 64, 8, 0.1, true},
		{17, 512, 64, 5, 0.1, false},
	} {
		name := fmt.Sprintf("T%d C%d out%d r%d p%v", c.T, c.C, c.out, c.r, c.p)
		w, A, B := nf4LoRA(t, g, c.out, c.C, c.r, 70)
		x, dout, h := g.Alloc(c.T, c.C), g.Alloc(c.T, c.out), g.Alloc(c.T, c.r)
		xres, nw, xn, rstd := g.Alloc(c.T, c.C), g.Alloc(c.C), g.Alloc(c.T, c.C), g.Alloc(c.T)
		g.Upload(x, randn(c.T*c.C, 73, 1))
		g.Upload(dout, randn(c.T*c.out, 74, 1))
		g.Upload(xres, randn(c.T*c.C, 75, 2))
		g.Upload(nw, randn(c.C, 76, 1))
		g.RMSNormForward(xn, rstd, xres, nw, 1e-5)
		dres0 := randn(c.T*c.C, 77, 1)
		gA, gB := g.Alloc(c.r, c.C), g.Alloc(c.out, c.r)
		l := &finetune.Linear{Name: "qkv_proj", W: w, LoRA: &finetune.LoRA{A: A, B: B, GradA: gA, GradB: gB, Scale: 2, Dropout: c.p}}
		g.LinearForward(g.Alloc(c.T, c.out), x, l, h, 9)
		// run: the linear's backward into a zeroed dln, then the norm's
		// backward into dres (zeroed, or dres0 when acc); mode "plain" (the
		// two launches), "fused" (deferred, rmsnorm_bwd_lora8) or "read"
		// (deferred, then dln downloaded first). It returns dres and dln
		// (dln as downloaded in "plain" and "read", nil in "fused").
		run := func(mode string, acc bool) (dres, dln []float32, deferred bool) {
			dl, dr := g.Alloc(c.T, c.C), g.Alloc(c.T, c.C)
			g.Zero(gA)
			g.Zero(gB)
			g.Zero(dl)
			if acc {
				g.Upload(dr, dres0)
			} else {
				g.Zero(dr)
			}
			if mode != "plain" {
				g.DeferLoRADx(dl)
			}
			g.LinearBackward(dl, dout, x, l, h, 9)
			deferred = dl.(*Tensor).loraDx != nil
			if mode != "fused" {
				dln = g.Download(dl)
			}
			g.RMSNormBackward(dr, dl, xres, nw, rstd)
			dres = g.Download(dr)
			if mode == "fused" && deferred {
				var err error
				func() {
					defer Recover(&err)
					g.Download(dl)
				}()
				if err == nil || !strings.Contains(err.Error(), "LoRADxDeferrer") {
					t.Errorf("%s: reading dln after the fused norm backward: %v, want the LoRADxDeferrer error", name, err)
				}
			}
			g.Free(dl)
			g.Free(dr)
			return dres, dln, deferred
		}
		for _, acc := range []bool{false, true} {
			want, wantDln, _ := run("plain", acc)
			got, _, deferred := run("fused", acc)
			gotR, gotDln, deferredR := run("read", acc)
			if deferred != c.defers || deferredR != c.defers {
				t.Fatalf("%s: deferred %v / %v, want %v", name, deferred, deferredR, c.defers)
			}
			for _, v := range []struct {
				what      string
				got, want []float32
			}{{"d residual (fused)", got, want}, {"d residual (read first)", gotR, want}, {"dln (read first)", gotDln, wantDln}} {
				for k := range v.want {
					if math.Float32bits(v.got[k]) != math.Float32bits(v.want[k]) {
						t.Fatalf("%s acc %v: %s[%d] = %v, want %v (the two launches)", name, acc, v.what, k, v.got[k], v.want[k])
					}
				}
			}
		}
		if g.pendDx.t != nil {
			t.Errorf("%s: a LoRA term is still pending", name)
		}
		for _, z := range []finetune.Tensor{x, dout, h, xres, nw, xn, rstd, gA, gB, A, B} {
			g.Free(z)
		}
		g.FreeWeight(w)
	}
}
