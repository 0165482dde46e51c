package finetune

import "math"

// ---------------------------------------------------------------------------
// RMSNorm (Phi3RMSNorm): out = w * (x * rstd), rstd = 1/sqrt(mean(x^2) + eps).

// RMSNormForward: out, x [T,C]; w [C]; rstd [T] saved for backward.
func (b *CPUBackend) RMSNormForward(out, rstd, x, w Tensor, eps float32) {
	o, rs, xs, ws := f32(out), f32(rstd), f32(x), f32(w)
	C := len(ws)
	for t := range rs {
		xt := xs[t*C : (t+1)*C]
		ot := o[t*C : (t+1)*C]
		var ss float64
		for _, v := range xt {
			ss += float64(v) * float64(v)
		}
		r := float32(1 / math.Sqrt(float64(float32(ss/float64(C))+eps)))
		rs[t] = r
		for k, v := range xt {
			ot[k] = ws[k] * (v * r)
		}
	}
}

// RMSNormBackward: dx [T,C] += d(out)/dx . dout (the weight is frozen).
// With n = x*rstd: dx = rstd * (w*dout - n * mean(w*dout*n)).
func (b *CPUBackend) RMSNormBackward(dx, dout, x, w, rstd Tensor) {
	d, do, xs, ws, rs := f32(dx), f32(dout), f32(x), f32(w), f32(rstd)
	C := len(ws)
	for t, r := range rs {
		xt := xs[t*C : (t+1)*C]
		dot := do[t*C : (t+1)*C]
		dt := d[t*C : (t+1)*C]
		var s float64 // sum_k w_k dout_k x_k
		for k, v := range xt {
			s += float64(ws[k]) * float64(dot[k]) * float64(v)
		}
		// coefficient of x_k: -rstd^3 * s / C
		c := float32(-float64(r) * float64(r) * float64(r) * s / float64(C))
		for k, v := range xt {
			dt[k] += r*ws[k]*dot[k] + c*v
		}
	}
}

// ---------------------------------------------------------------------------
// SwiGLU (Phi3MLP): gate, up = chunk(gate_up, 2); out = up * silu(gate).

// SwiGLUForward: out [T,I] = silu(gate) * up from gateUp [T,2I].
func (b *CPUBackend) SwiGLUForward(out, gateUp Tensor) {
	o, gu := f32(out), f32(gateUp)
	I := lastDim(out)
	for t := 0; t*I < len(o); t++ {
		g := gu[t*2*I : t*2*I+I]
		u := gu[t*2*I+I : (t+1)*2*I]
		ot := o[t*I : (t+1)*I]
		for k, gv := range g {
			ot[k] = u[k] * silu(gv)
		}
	}
}

// SwiGLUBackward: dgateUp [T,2I] += gradient of out w.r.t. gateUp.
// d up = dout * silu(g); d gate = dout * up * sig(g) * (1 + g*(1 - sig(g))).
func (b *CPUBackend) SwiGLUBackward(dgateUp, dout, gateUp Tensor) {
	dgu, do, gu := f32(dgateUp), f32(dout), f32(gateUp)
	I := lastDim(dout)
	for t := 0; t*I < len(do); t++ {
		g := gu[t*2*I : t*2*I+I]
		u := gu[t*2*I+I : (t+1)*2*I]
		dg := dgu[t*2*I : t*2*I+I]
		du := dgu[t*2*I+I : (t+1)*2*I]
		dt := do[t*I : (t+1)*I]
		for k, gv := range g {
			s := sigmoid(gv)
			du[k] += dt[k] * silu(gv)
			dg[k] += dt[k] * u[k] * s * (1 + gv*(1-s))
		}
	}
}

// lastDim is a tensor's innermost dimension (its row width).
func lastDim(t Tensor) int {
	s := t.Shape()
	if len(s) == 0 {
		return 1
	}
	return s[len(s)-1]
}

func sigmoid(x float32) float32 { return float32(1 / (1 + math.Exp(-float64(x)))) }

// silu is x * sigmoid(x), computed like torch's float32 kernel x / (1 + exp(-x)).
func silu(x float32) float32 { return x / (1 + float32(math.Exp(-float64(x)))) }

// Add: out = a + b (out may alias a or b).
func (b *CPUBackend) Add(out, a, bt Tensor) {
	o, as, bs := f32(out), f32(a), f32(bt)
	for k := range o {
		o[k] = as[k] + bs[k]
	}
}
