package finetune

import (
	"bytes"
	"fmt"

	"github.com/ollama-tune/ollama-tune/finetune/optim"
)

// The optimizer of the SFT loop over the Backend's AdamW ops: one state
// per LoRA matrix, as transformers builds it for optim = adamw_torch,
// adamw_8bit or paged_adamw_8bit.

// BnbAdamW32 is bitsandbytes' 32-bit Adam kernel on the CPU (optim.BnbAdam32).
func (b *CPUBackend) BnbAdamW32(p, g, m, v Tensor, hp AdamParams) {
	if err := optim.BnbAdam32(f32(p), f32(g), f32(m), f32(v), hp.OptimParams()); err != nil {
		panic(fmt.Sprintf("cpu backend: BnbAdamW32: %v", err))
	}
}

// UploadBytes copies src into a uint8 tensor.
func (b *CPUBackend) UploadBytes(dst Tensor, src []uint8) {
	d := u8(dst)
	if len(d) != len(src) {
		panic(fmt.Sprintf("cpu backend: upload of %d bytes into a tensor of %d", len(src), len(d)))
	}
	copy(d, src)
}

// DownloadBytes returns a copy of a uint8 tensor's bytes.
func (b *CPUBackend) DownloadBytes(src Tensor) []uint8 { return bytes.Clone(u8(src)) }

// optimizer holds the state of every LoRA matrix.
type optimizer struct {
	b      Backend
	kind   optim.Kind
	params []NamedLoRA
	// Per parameter: fp32 moments m, v (adamw_torch, and the small
	// parameters of the 8-bit optimizers), or 8-bit state.
	m, v []Tensor
	st8  []*Adam8State
}

func newOptimizer(b Backend, params []NamedLoRA, name string) (*optimizer, error) {
	kind, err := optim.ParseOptimizer(name)
	if err != nil {
		return nil, &ConfigError{Key: "training.optim", Problem: err.Error()}
	}
	o := &optimizer{b: b, kind: kind, params: params,
		m: make([]Tensor, len(params)), v: make([]Tensor, len(params)), st8: make([]*Adam8State, len(params))}
	for i, p := range params {
		n := p.Numel()
		if kind.Is8bit() && optim.Uses8bit(n) {
			nb := optim.Blocks8bit(n)
			o.st8[i] = &Adam8State{M: b.AllocBytes(n), V: b.AllocBytes(n), AbsmaxM: b.Alloc(nb), AbsmaxV: b.Alloc(nb)}
			continue
		}
		o.m[i], o.v[i] = b.Alloc(p.Shape...), b.Alloc(p.Shape...)
	}
	return o, nil
}

// update applies one step to every parameter from its (clipped) gradient.
func (o *optimizer) update(hp AdamParams) {
	multi, _ := o.b.(MultiAdamW8bit)
	if multi != nil {
		// The 8-bit states in one call; the parameters are independent,
		// so the order does not matter.
		var ps, gs []Tensor
		var sts []*Adam8State
		for i, p := range o.params {
			if o.st8[i] != nil {
				ps, gs, sts = append(ps, p.Param), append(gs, p.Grad), append(sts, o.st8[i])
			}
		}
		if len(ps) > 0 {
			multi.AdamW8bitMulti(ps, gs, sts, hp)
		}
	}
	for i, p := range o.params {
		switch {
		case o.st8[i] != nil:
			if multi == nil {
				o.b.AdamW8bit(p.Param, p.Grad, o.st8[i], hp)
			}
		case o.kind.Is8bit():
			// bitsandbytes' 8-bit optimizers keep 32-bit state (and its
			// kernel) for parameters under optim.Min8bitSize values.
			o.b.BnbAdamW32(p.Param, p.Grad, o.m[i], o.v[i], hp)
		default:
			o.b.AdamW(p.Param, p.Grad, o.m[i], o.v[i], hp)
		}
	}
}

func (o *optimizer) free() {
	for i := range o.params {
		if st := o.st8[i]; st != nil {
			o.b.Free(st.M)
			o.b.Free(st.V)
			o.b.Free(st.AbsmaxM)
			o.b.Free(st.AbsmaxV)
		} else {
			o.b.Free(o.m[i])
			o.b.Free(o.v[i])
		}
	}
}
