package finetune

// Matrix multiplications of the CPU backend. Three shapes cover every op:
//
//	matmulWT: out[T,O] (+)= alpha * x[T,I] . W[O,I]^T   (forward of a linear)
//	matmulW:  dx[T,I]   += alpha * dout[T,O] . W[O,I]   (its input gradient)
//	matmulTN: out[N,M]  += alpha * a[T,N]^T . b[T,M]    (LoRA weight gradients)
//
// W may be NF4: tiles of wTile rows are dequantized into a per-goroutine
// scratch right before they are used, so the full-precision matrix never
// exists. The kernels block 2 rows of x by 4 rows of W (8 independent
// float32 accumulators), enough for Go's scalar code to keep the FP units
// busy; each output element is one accumulator summed over k in order, so
// the result does not depend on how rows are split between goroutines.

// wTile is how many weight rows are dequantized at a time (a multiple of 4).
const wTile = 16

// matmulWT computes out[T,O] = alpha*x.W^T, or out += alpha*x.W^T when acc.
func (b *CPUBackend) matmulWT(out, x []float32, T int, w *cpuWeight, alpha float32, acc bool) {
	O, I := w.out, w.in
	if T == 0 || O == 0 {
		return
	}
	tiles := (O + wTile - 1) / wTile
	// Split over weight tiles (each is dequantized once), unless the weight
	// is dense and there are too few tiles to keep every thread busy.
	if w.dense != nil && tiles < 2*b.threads && T > 2*tiles {
		b.parallelFor(T, 2, func(t0, t1 int) {
			dotKernel(out, O, 0, x[t0*I:t1*I], t1-t0, w.dense, O, I, alpha, acc, t0)
		})
		return
	}
	b.parallelFor(O, wTile, func(o0, o1 int) {
		var sp *[]float32
		var scratch []float32
		if w.dense == nil {
			sp = getScratch(wTile * I)
			defer putScratch(sp)
			scratch = *sp
		}
		for ot := o0; ot < o1; ot += wTile {
			n := min(wTile, o1-ot)
			wr := w.rows(scratch, ot, n)
			dotKernel(out, O, ot, x, T, wr, n, I, alpha, acc, 0)
		}
	})
}

// dotKernel: for t in [0,T), o in [0,n):
// out[(tOff+t)*ldo + oOff+o] (+)= alpha * dot(x[t*K:(t+1)*K], w[o*K:(o+1)*K]).
func dotKernel(out []float32, ldo, oOff int, x []float32, T int, w []float32, n, K int, alpha float32, acc bool, tOff int) {
	store := func(t, o int, s float32) {
		p := &out[(tOff+t)*ldo+oOff+o]
		if alpha != 1 {
			s *= alpha
		}
		if acc {
			*p += s
		} else {
			*p = s
		}
	}
	t := 0
	for ; t+2 <= T; t += 2 {
		x0 := x[t*K : t*K+K]
		x1 := x[(t+1)*K : (t+1)*K+K]
		o := 0
		for ; o+4 <= n; o += 4 {
			w0 := w[o*K : o*K+K]
			w1 := w[(o+1)*K : (o+1)*K+K]
			w2 := w[(o+2)*K : (o+2)*K+K]
			w3 := w[(o+3)*K : (o+3)*K+K]
			x1, w0, w1, w2, w3 := x1[:len(x0)], w0[:len(x0)], w1[:len(x0)], w2[:len(x0)], w3[:len(x0)] // bounds-check hints
			var s00, s01, s02, s03, s10, s11, s12, s13 float32
			for k, a := range x0 {
				c := x1[k]
				b0, b1, b2, b3 := w0[k], w1[k], w2[k], w3[k]
				s00 += a * b0
				s01 += a * b1
				s02 += a * b2
				s03 += a * b3
				s10 += c * b0
				s11 += c * b1
				s12 += c * b2
				s13 += c * b3
			}
			store(t, o, s00)
			store(t, o+1, s01)
			store(t, o+2, s02)
			store(t, o+3, s03)
			store(t+1, o, s10)
			store(t+1, o+1, s11)
			store(t+1, o+2, s12)
			store(t+1, o+3, s13)
		}
		for ; o < n; o++ {
			w0 := w[o*K : o*K+K]
			x1, w0 := x1[:len(x0)], w0[:len(x0)]
			var s0, s1 float32
			for k, a := range x0 {
				s0 += a * w0[k]
				s1 += x1[k] * w0[k]
			}
			store(t, o, s0)
			store(t+1, o, s1)
		}
	}
	for ; t < T; t++ {
		x0 := x[t*K : t*K+K]
		o := 0
		for ; o+4 <= n; o += 4 {
			w0 := w[o*K : o*K+K]
			w1 := w[(o+1)*K : (o+1)*K+K]
			w2 := w[(o+2)*K : (o+2)*K+K]
			w3 := w[(o+3)*K : (o+3)*K+K]
			w0, w1, w2, w3 = w0[:len(x0)], w1[:len(x0)], w2[:len(x0)], w3[:len(x0)]
			var s0, s1, s2, s3 float32
			for k, a := range x0 {
				s0 += a * w0[k]
				s1 += a * w1[k]
				s2 += a * w2[k]
				s3 += a * w3[k]
			}
			store(t, o, s0)
			store(t, o+1, s1)
			store(t, o+2, s2)
			store(t, o+3, s3)
		}
		for ; o < n; o++ {
			w0 := w[o*K : o*K+K]
			w0 = w0[:len(x0)]
			var s0 float32
			for k, a := range x0 {
				s0 += a * w0[k]
			}
			store(t, o, s0)
		}
	}
}

// matmulW accumulates dx[T,I] += alpha * dout[T,O] . W[O,I]. Work is split
// over tokens; each goroutine walks all of W in tiles (an NF4 weight is
// thus dequantized once per goroutine, a small cost next to the T/threads
// multiply-adds each value takes part in).
func (b *CPUBackend) matmulW(dx, dout []float32, T int, w *cpuWeight, alpha float32) {
	O, I := w.out, w.in
	if T == 0 || O == 0 {
		return
	}
	b.parallelFor(T, 2, func(t0, t1 int) {
		var sp *[]float32
		var scratch []float32
		if w.dense == nil {
			sp = getScratch(wTile * I)
			defer putScratch(sp)
			scratch = *sp
		}
		for ot := 0; ot < O; ot += wTile {
			n := min(wTile, O-ot)
			wr := w.rows(scratch, ot, n)
			axpyKernel(dx[t0*I:t1*I], dout[t0*O:t1*O], t1-t0, O, ot, wr, n, I, alpha)
		}
	})
}

// axpyKernel: for t in [0,T): dx[t,:] += alpha * sum_{o<n} dout[t*ldd+oOff+o] * w[o,:].
func axpyKernel(dx, dout []float32, T, ldd, oOff int, w []float32, n, K int, alpha float32) {
	coef := func(t, o int) float32 { return alpha * dout[t*ldd+oOff+o] }
	t := 0
	for ; t+2 <= T; t += 2 {
		d0 := dx[t*K : t*K+K]
		d1 := dx[(t+1)*K : (t+1)*K+K]
		o := 0
		for ; o+4 <= n; o += 4 {
			w0 := w[o*K : o*K+K]
			w1 := w[(o+1)*K : (o+1)*K+K]
			w2 := w[(o+2)*K : (o+2)*K+K]
			w3 := w[(o+3)*K : (o+3)*K+K]
			a0, a1, a2, a3 := coef(t, o), coef(t, o+1), coef(t, o+2), coef(t, o+3)
			c0, c1, c2, c3 := coef(t+1, o), coef(t+1, o+1), coef(t+1, o+2), coef(t+1, o+3)
			d1, w0, w1, w2, w3 := d1[:len(d0)], w0[:len(d0)], w1[:len(d0)], w2[:len(d0)], w3[:len(d0)]
			for k := range d0 {
				b0, b1, b2, b3 := w0[k], w1[k], w2[k], w3[k]
				d0[k] += a0*b0 + a1*b1 + a2*b2 + a3*b3
				d1[k] += c0*b0 + c1*b1 + c2*b2 + c3*b3
			}
		}
		for ; o < n; o++ {
			w0 := w[o*K : o*K+K]
			a0, c0 := coef(t, o), coef(t+1, o)
			d0, d1 := d0[:len(w0)], d1[:len(w0)]
			for k, v := range w0 {
				d0[k] += a0 * v
				d1[k] += c0 * v
			}
		}
	}
	for ; t < T; t++ {
		d0 := dx[t*K : t*K+K]
		o := 0
		for ; o+4 <= n; o += 4 {
			w0 := w[o*K : o*K+K]
			w1 := w[(o+1)*K : (o+1)*K+K]
			w2 := w[(o+2)*K : (o+2)*K+K]
			w3 := w[(o+3)*K : (o+3)*K+K]
			a0, a1, a2, a3 := coef(t, o), coef(t, o+1), coef(t, o+2), coef(t, o+3)
			w0, w1, w2, w3 = w0[:len(d0)], w1[:len(d0)], w2[:len(d0)], w3[:len(d0)]
			for k := range d0 {
				d0[k] += a0*w0[k] + a1*w1[k] + a2*w2[k] + a3*w3[k]
			}
		}
		for ; o < n; o++ {
			w0 := w[o*K : o*K+K]
			a0 := coef(t, o)
			d0 := d0[:len(w0)]
			for k, v := range w0 {
				d0[k] += a0 * v
			}
		}
	}
}

// matmulTN accumulates out[N,M] += alpha * a[T,N]^T . b[T,M], split over
// the N rows of out (the LoRA gradients: N is out or r, M is r or in).
func (b *CPUBackend) matmulTN(out, a, bm []float32, T, N, M int, alpha float32) {
	b.parallelFor(N, 1, func(n0, n1 int) {
		for n := n0; n < n1; n++ {
			row := out[n*M : n*M+M]
			for t := 0; t < T; t++ {
				c := alpha * a[t*N+n]
				br := bm[t*M : t*M+M]
				br = br[:len(row)]
				for m, v := range br {
					row[m] += c * v
				}
			}
		}
	})
}

// denseView wraps a row-major [out, in] slice as a weight for the kernels.
func denseView(data []float32, out, in int) *cpuWeight {
	return &cpuWeight{out: out, in: in, dense: data}
}
