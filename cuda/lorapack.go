//go:build cuda

package cuda

// Packed LoRA weights (issue 8, v11). The row kernels (lora.cu) multiply
// each row of their big operand with the adapter's A [r,K] (forward) or
// B^T (backward, B [K,r]) on the tensor cores, and every block loaded and
// rounded its own float32 copy of that matrix: two 16-byte loads and four
// conversions a lane and chunk for A, eight scattered 4-byte loads and four
// conversions for B^T, and as many bytes from L2 as the row operand itself
// (128 blocks x 8 x K x 4 bytes a call). PackLoRA rounds every linear's A
// and B^T once, in one launch when a forward starts (finetune.LoRAPacker),
// into bfloat16 rows [r,K] that the kernels read with one 16-byte load a
// lane and chunk (w16). The rounding is lr_w_frag's and lr_wt_frag's, so
// the results are the same bits. A pack is dropped as soon as a backend op
// writes its matrix (touch: an upload, Zero, Copy, Free; the optimizers,
// Scale, Add): the kernels then round the float32 matrix as before until
// the next PackLoRA. OLLAMA_TUNE_CUDA_REFERENCE=lora-pack turns it off.
// H100, the Phi-3-mini step (BENCHMARKS.md, v11): -0.4 to -0.5 ms, of
// which the pack launch takes back 0.07; +25 MB.

import (
	"slices"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

var loraPackOn = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "lora-pack")

var _ finetune.LoRAPacker = (*Backend)(nil)

// loraPack is one matrix's packed copy: bfloat16 [r,K] at ptr, valid
// while the float32 matrix is unchanged since it was queued.
type loraPack struct {
	ptr   cu.DevicePtr
	bytes int64
	valid bool
}

// packTable is the device copy of a PackLoRA job list (5 values a job:
// src, dst, R, C, trans; kernels/lora.cu lora_pack_bf16), kept while the
// list is the same.
type packTable struct {
	key   []int64
	mem   cu.DevicePtr
	bytes int64
}

// PackLoRA (finetune.LoRAPacker) queues the packing of the linears' A and
// B^T where the row kernels can read them: LoRA under BF16 compute on the
// tensor cores, r <= 8, K % 8 == 0 (canLoRARows' shapes).
func (b *Backend) PackLoRA(ls []*finetune.Linear) {
	const op = "PackLoRA"
	defer b.enter(op)()
	if !loraPackOn {
		return
	}
	var jobs []int64
	maxN := int64(0)
	add := func(src *Tensor, R, C int, trans bool) {
		p := b.packs[src.ptr]
		if p == nil {
			if b.packs == nil {
				b.packs = map[cu.DevicePtr]*loraPack{}
			}
			bytes := 2 * int64(R) * int64(C)
			ptr, err := b.rawAlloc(bytes, "a packed LoRA matrix")
			check(op, err)
			p = &loraPack{ptr: ptr, bytes: bytes}
			b.packs[src.ptr] = p
		}
		if p.valid {
			return
		}
		jobs = append(jobs, int64(src.ptr), int64(p.ptr), int64(R), int64(C), int64(boolArg(trans)))
		items := int64(R) * int64(C) // lora_pack_bf16's: values, or with trans rows
		if trans {
			items = int64(R)
		}
		maxN = max(maxN, items)
		p.valid = true // the stream runs the pack before any reader
	}
	for _, l := range ls {
		if l == nil || l.LoRA == nil {
			continue
		}
		w := cudaW(l.W, op)
		r := loraRank(l)
		if !b.loraBF16(w) || r > 8 || w.in%8 != 0 || w.out%8 != 0 || int64(r)*int64(max(w.in, w.out)) >= 1<<31 {
			continue
		}
		A, B := tensor(l.LoRA.A, kindF32, op), tensor(l.LoRA.B, kindF32, op)
		add(A, r, w.in, false) // A [r,in] as is
		add(B, w.out, r, true) // B [out,r] -> B^T [r,out]
	}
	if len(jobs) == 0 {
		return
	}
	t := b.packTableFor(op, jobs)
	// A few blocks a job, each thread several items: 256 jobs x 128
	// blocks, mostly idle, took 78 us (H100); the work is ~25 MB.
	blocks := min((maxN+2047)/2048, 16)
	b.launch(op, "lora_pack_bf16", [3]int{int(blocks), len(jobs) / 5, 1}, 256, 0, ptrArg(t.mem))
}

// packTableFor returns the device table of jobs, uploading it when the list
// changed (the same every step of a training run).
func (b *Backend) packTableFor(op string, jobs []int64) *packTable {
	if t := b.packTab; t != nil && slices.Equal(t.key, jobs) {
		return t
	}
	if t := b.packTab; t != nil {
		b.rawFree(t.mem, t.bytes)
		b.packTab = nil
	}
	t := &packTable{key: slices.Clone(jobs), bytes: 8 * int64(len(jobs))}
	p, err := b.rawAlloc(t.bytes, "the LoRA pack table")
	check(op, err)
	t.mem = p
	b.upload(op, p, unsafe.Pointer(&t.key[0]), t.bytes)
	b.packTab = t
	return t
}

// packedW is the valid packed copy of the matrix at W (the row kernels'
// w16), or 0.
func (b *Backend) packedW(W cu.DevicePtr) cu.DevicePtr {
	if p := b.packs[W]; p != nil && p.valid {
		return p.ptr
	}
	return 0
}

// packStale drops the pack of the matrix at p (a backend op writes it).
func (b *Backend) packStale(p cu.DevicePtr) {
	if pk := b.packs[p]; pk != nil {
		pk.valid = false
	}
}

// dropPack frees the pack of the matrix at p (Free).
func (b *Backend) dropPack(p cu.DevicePtr) {
	if pk := b.packs[p]; pk != nil {
		b.rawFree(pk.ptr, pk.bytes)
		delete(b.packs, p)
	}
}

// freePacks releases the packs and their table (Close).
func (b *Backend) freePacks() {
	for _, p := range b.packs {
		b.rawFree(p.ptr, p.bytes)
	}
	b.packs = nil
	if t := b.packTab; t != nil {
		b.rawFree(t.mem, t.bytes)
		b.packTab = nil
	}
}
