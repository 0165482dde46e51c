//go:build cuda

package cuda

import (
	"bytes"
	"math"
	"testing"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// pinArgs is p's GEMM at the step's layout: the forwards x[M,K] . W[N,K]^T,
// the dx products dout[M,K] . W[K,N] with W's rows N + 8 wide under
// bfloat16 (the folded linears' stride, linearLD), N wide under float32.
func pinArgs(p ltPin) (g gemmArgs, rowsB int) {
	g = gemmArgs{transB: p.transB, M: p.M, N: p.N, K: p.K, alpha: 1, lda: p.K, ldc: p.N, abType: p.ab, cHalf: p.cHalf}
	switch {
	case p.transB:
		g.ldb, rowsB = p.K, p.N
	case p.ab == dataR32F:
		g.ldb, rowsB = p.N, p.K
	default:
		g.ldb, rowsB = p.N+8, p.K
	}
	return g, rowsB
}

// TestGemmPinned runs every pinned cuBLASLt configuration (cublaslt.go) at
// its shape and the step's strides, with beta 0 and 1, and compares it
// with cublasGemmEx bit for bit; a few entries also with a float64 dot
// product (the pair cannot agree on a wrong answer unnoticed). Where the
// pins are off (another GPU or cuBLASLt version) it says why and skips;
// where they are on, every pin must be taken.
func TestGemmPinned(t *testing.T) {
	g := gpuB16
	if g.lt == nil {
		t.Skipf("pinned cuBLASLt configurations: %s", g.info.CublasLtPins)
	}
	t.Logf("pinned cuBLASLt configurations: %s", g.info.CublasLtPins)
	defer func() { _ = g.SetTF32(false) }() // the TF32 pins' runs switch the handle
	// One set of operands, as large as the largest pin's: each pin reads
	// prefixes of it (drawing ~77M values once rather than ~230M keeps the
	// test quick; the values only have to be arbitrary).
	// The float32 pins' operands are float32 (v25), the others' bfloat16.
	var maxA, maxB, maxC, maxA32, maxB32 int
	for _, p := range ltPins {
		args, rowsB := pinArgs(p)
		if p.ab == dataR32F {
			maxA32, maxB32 = max(maxA32, args.M*args.lda), max(maxB32, rowsB*args.ldb)
		} else {
			maxA, maxB = max(maxA, args.M*args.lda), max(maxB, rowsB*args.ldb)
		}
		maxC = max(maxC, args.M*args.ldc)
	}
	a16 := bf16Round(randn(maxA, 700, 1))
	b16 := bf16Round(randn(maxB, 800, 0.05))
	a32, b32 := randn(maxA32, 701, 1), randn(maxB32, 801, 0.05)
	c0All := randn(maxC, 900, 1)
	ta, tb := g.AllocBytes(2*maxA), g.AllocBytes(2*maxB)
	ta32, tb32 := g.Alloc(maxA32), g.Alloc(maxB32)
	defer func() {
		for _, x := range []finetune.Tensor{ta, tb, ta32, tb32} {
			g.Free(x)
		}
	}()
	g.UploadBytes(ta, bf16Bytes(a16))
	g.UploadBytes(tb, bf16Bytes(b16))
	g.Upload(ta32, a32)
	g.Upload(tb32, b32)
	for _, p := range ltPins {
		args, _ := pinArgs(p)
		a, bm, tA, tB, tol := a16, b16, ta, tb, 4e-3 // a bfloat16 C's rounding is 2^-9 of |ref| <= sum |a w|
		if p.ab == dataR32F {
			a, bm, tA, tB, tol = a32, b32, ta32, tb32, 1e-5 // float32 sums' rounding: ~K 2^-24 of sum |a w| at worst
		}
		// The TF32 pins run with the handle on TF32, as cublasSgemm then
		// does (training.tf32); its operands' rounding is 2^-11 of each |a w|.
		if err := g.SetTF32(p.tf32); err != nil {
			t.Fatal(err)
		}
		if p.tf32 {
			tol = 2e-3
		}
		c0 := c0All[:args.M*args.ldc]
		var tc finetune.Tensor
		c0b := bf16Bytes(c0)
		if p.cHalf {
			tc = g.AllocBytes(len(c0b))
		} else {
			tc = g.Alloc(len(c0))
		}
		args.A, args.B, args.C = uintptr(tA.(*Tensor).ptr), uintptr(tB.(*Tensor).ptr), uintptr(tc.(*Tensor).ptr)
		betas := []float32{0, 1}
		if p.cHalf {
			betas = betas[:1] // the row kernels read a bfloat16 C written with beta 0 only
		}
		for _, beta := range betas {
			args.beta = beta
			var outs [2][]byte
			for v := range outs {
				if p.cHalf {
					g.UploadBytes(tc, c0b)
				} else {
					g.Upload(tc, c0)
				}
				if err := pinRun(g, args, v == 1); err != nil {
					t.Fatalf("%s beta %v: %v", p.name, beta, err)
				}
				outs[v] = downloadRaw(g, tc, p.cHalf)
			}
			if !bytes.Equal(outs[0], outs[1]) {
				n := 0
				for k := range outs[0] {
					if outs[0][k] != outs[1][k] {
						n++
					}
				}
				t.Errorf("%s (%dx%dx%d) beta %v: pinned cuBLASLt differs from cublasGemmEx in %d of %d bytes", p.name, p.M, p.N, p.K, beta, n, len(outs[0]))
				continue
			}
			// A few entries against float64.
			worst := 0.0
			for s := range 64 {
				m, n := (s*7919)%p.M, (s*104729)%p.N
				var ref, scale float64 // scale: sum |a w|, what the rounding errors are relative to
				for k := range p.K {
					var w float32
					if p.transB {
						w = bm[n*args.ldb+k]
					} else {
						w = bm[k*args.ldb+n]
					}
					ref += float64(a[m*args.lda+k]) * float64(w)
					scale += math.Abs(float64(a[m*args.lda+k]) * float64(w))
				}
				var got float64
				if p.cHalf {
					u := uint32(outs[1][2*(m*args.ldc+n)]) | uint32(outs[1][2*(m*args.ldc+n)+1])<<8
					got = float64(math.Float32frombits(u << 16))
				} else {
					i := 4 * (m*args.ldc + n)
					got = float64(math.Float32frombits(uint32(outs[1][i]) | uint32(outs[1][i+1])<<8 | uint32(outs[1][i+2])<<16 | uint32(outs[1][i+3])<<24))
					ref += float64(beta) * float64(c0[m*args.ldc+n])
					scale += math.Abs(float64(beta) * float64(c0[m*args.ldc+n]))
				}
				worst = max(worst, math.Abs(got-ref)/scale)
			}
			t.Logf("%-24s %5dx%5dx%5d beta %v: the same bits as gemmEx; sampled error against float64 %.2g of sum |a w|", p.name, p.M, p.N, p.K, beta, worst)
			if !(worst < tol) {
				t.Errorf("%s beta %v: sampled error against float64 %.3g of sum |a w|", p.name, beta, worst)
			}
		}
		g.Free(tc)
	}
	if r := g.lt.refused(); len(r) > 0 {
		t.Errorf("pins refused on this GPU: %v", r)
	}
}

// pinRun runs args once through gemmEx or through its pin (which must
// take it).
func pinRun(g *Backend, args gemmArgs, pinned bool) (err error) {
	defer Recover(&err)
	defer g.enter("pinned GEMM test")()
	if pinned {
		p := g.lt.plan(args, g.blas.tf32)
		if p == nil {
			if r := g.lt.refused(); len(r) > 0 {
				return &Error{Op: "pinned GEMM test", Err: errString(r[len(r)-1])}
			}
			return &Error{Op: "pinned GEMM test", Err: errString("the pin did not take the GEMM")}
		}
		var ws cu.DevicePtr
		if p.ws > 0 {
			ws = g.scratchBuf(sLtWork, p.ws, "pinned GEMM test")
		}
		check("pinned GEMM test", g.lt.run(p, args, uintptr(ws)))
	} else {
		check("pinned GEMM test", g.blas.run(args))
	}
	check("pinned GEMM test", g.stream.Synchronize())
	return nil
}

// downloadRaw is C's bytes: a bfloat16 C's as they are, a float32 C's
// little-endian.
func downloadRaw(g *Backend, c finetune.Tensor, half bool) []byte {
	if half {
		return g.DownloadBytes(c)
	}
	f := g.Download(c)
	out := make([]byte, 4*len(f))
	for k, v := range f {
		u := math.Float32bits(v)
		out[4*k], out[4*k+1], out[4*k+2], out[4*k+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
	}
	return out
}

type errString string

func (e errString) Error() string { return string(e) }

// TestGemmPinDeclines checks that only a pin's exact shape and types, with
// 256-byte aligned operands, take the pinned path.
func TestGemmPinDeclines(t *testing.T) {
	g := gpuB16
	if g.lt == nil {
		t.Skipf("pinned cuBLASLt configurations: %s", g.info.CublasLtPins)
	}
	base, _ := pinArgs(ltPins[1]) // o_proj forward
	base.A, base.B, base.C = 1<<20, 2<<20, 3<<20
	if g.lt.plan(base, false) == nil {
		t.Fatalf("o_proj forward's pin did not take its own shape: %v", g.lt.refused())
	}
	// A float32 pin takes its shape only under its own math (IEEE, or
	// TF32 for a TF32 pin), unless another pin has the shape under the
	// other (v25); a bfloat16 pin takes its shape either way.
	for _, p := range ltPins {
		if p.ab != dataR32F {
			continue
		}
		a, _ := pinArgs(p)
		a.A, a.B, a.C = 1<<20, 2<<20, 3<<20
		if pl := g.lt.plan(a, p.tf32); pl == nil || pl.pin.name != p.name {
			t.Errorf("%s: its pin did not take its own shape: %v", p.name, g.lt.refused())
		}
		if pl := g.lt.plan(a, !p.tf32); pl != nil && pl.pin.tf32 == p.tf32 {
			t.Errorf("%s: the pin took the GEMM under the other math", p.name)
		}
	}
	if g.lt.plan(base, true) == nil {
		t.Errorf("o_proj forward's pin did not take its shape with the handle on TF32")
	}
	for _, tc := range []struct {
		name string
		edit func(*gemmArgs)
	}{
		{"fewer tokens", func(a *gemmArgs) { a.M = 1000 }},
		{"float32 operands", func(a *gemmArgs) { a.abType = dataR32F }},
		{"float16 operands", func(a *gemmArgs) { a.abType = dataR16F }},
		{"transposed A", func(a *gemmArgs) { a.transA = true }},
		{"bfloat16 C", func(a *gemmArgs) { a.cHalf = true }},
		{"A 16-byte aligned", func(a *gemmArgs) { a.A += 16 }},
		{"C 128-byte aligned", func(a *gemmArgs) { a.C += 128 }},
	} {
		a := base
		tc.edit(&a)
		if g.lt.plan(a, false) != nil {
			t.Errorf("%s: the pinned path took it", tc.name)
		}
	}
}
