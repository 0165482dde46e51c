//go:build cuda

package cuda

import (
	"bytes"
	"fmt"
	"math"
	"testing"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// TestSwiGLURowsLean: lora_rows_swiglu_bf16_hl_w32 (v19, loraRowsAct's
// kernel for a bfloat16 gate_up) writes the bytes lora_rows_swiglu_bf16_h_w32
// writes (h, its rounding, bf16(act), act, the dropout copy), for each of
// the eight sets of outputs its entry point picks an instantiation for,
// with a packed A and without one (its fallback), with and without
// dropout, at a partial row block and chunk, rank 5, a NaN, an infinity
// and an overflowing exp in gate_up, and at Phi-3-mini's down_proj input.
func TestSwiGLURowsLean(t *testing.T) {
	g := gpuB16
	for _, c := range []struct {
		T, I, r int
		p       float32
		special bool
	}{
		{33, 40, 8, 0.1, true},       // a partial row block and 32-value chunk
		{9, 2056, 5, 0.1, false},     // more chunks than warps, rank 5
		{21, 48, 8, 0, false},        // no dropout
		{1024, 8192, 8, 0.05, false}, // Phi-3-mini's down_proj input, 1,024 tokens
	} {
		name := fmt.Sprintf("T%d I%d r%d p%g", c.T, c.I, c.r, c.p)
		w, A, B := nf4LoRA(t, g, 16, c.I, c.r, 120)
		l := &finetune.Linear{Name: "down_proj", W: w, LoRA: &finetune.LoRA{A: A, B: B, Scale: 2, Dropout: c.p}}
		gu := g.AllocHalf(c.T, 2*c.I)
		vals := randn(c.T*2*c.I, 121, 2)
		if c.special {
			row := 2 * c.I
			vals[3*row+5] = float32(math.NaN())               // a gate
			vals[4*row+c.I+9] = float32(math.Inf(1))          // an up
			vals[7*row+11] = -100                             // exp(100) overflows: silu -0
			vals[8*row+12] = float32(math.Inf(-1))            // a gate of -inf: silu NaN
			vals[9*row+c.I+1] = float32(math.Copysign(0, -1)) // -0
		}
		uploadHalf(g, gu, vals)
		guPtr, Ap := gu.(*Tensor).ptr, unwrap(A, kindF32, "test").ptr
		ldyh, ldp := c.I+8, 8
		sizes := map[string]int64{"act": 4 * int64(c.T*c.I), "yh": 2 * int64(c.T*ldyh), "P": 4 * int64(c.T*c.r),
			"p16": 2 * int64(c.T*ldp), "xd16": 2 * int64(c.T*c.I)}
		order := []string{"act", "yh", "P", "p16", "xd16"}
		run := func(kernel string, mask int) map[string][]byte {
			ptrs := map[string]cu.DevicePtr{}
			for _, k := range order {
				p, err := g.rawAlloc(sizes[k], "test")
				if err != nil {
					t.Fatal(err)
				}
				check("test", cu.MemsetD8Async(p, 0xa5, sizes[k], g.stream)) // poison: what is not written stays so
				ptrs[k] = p
			}
			on := func(bit int, k string) cu.DevicePtr {
				if mask&bit != 0 {
					return ptrs[k]
				}
				return 0
			}
			func() {
				defer g.enter("test")()
				g.loraRowsLaunch("test", kernel, on(2, "yh"), ldyh, ptrs["P"], ptrs["p16"], ldp, 2,
					guPtr, Ap, c.T, c.I, c.r, c.p, 0x5eed, prepJob{}, ptrArg(on(4, "act")), ptrArg(on(1, "xd16")))
			}()
			out := map[string][]byte{}
			for _, k := range order {
				buf := make([]byte, sizes[k])
				func() {
					defer g.enter("test")()
					g.download("test", unsafe.Pointer(&buf[0]), ptrs[k], sizes[k])
				}()
				out[k] = buf
				g.rawFree(ptrs[k], sizes[k])
			}
			return out
		}
		for _, packed := range []bool{false, true} {
			if packed {
				g.PackLoRA([]*finetune.Linear{l})
				if g.packedW(Ap) == 0 {
					t.Fatalf("%s: PackLoRA packed nothing", name)
				}
			}
			for mask := 0; mask < 8; mask++ {
				want := run("lora_rows_swiglu_bf16_h", mask)
				got := run("lora_rows_swiglu_bf16_hl", mask)
				for _, k := range order {
					if !bytes.Equal(got[k], want[k]) {
						i := 0
						for i < len(got[k]) && got[k][i] == want[k][i] {
							i++
						}
						t.Fatalf("%s packed %v outputs %03b: %s differs from lora_rows_swiglu_bf16_h_w32's at byte %d of %d",
							name, packed, mask, k, i, len(got[k]))
					}
				}
			}
		}
		for _, z := range []finetune.Tensor{A, B, gu} {
			g.Free(z)
		}
		g.FreeWeight(w)
	}
}
