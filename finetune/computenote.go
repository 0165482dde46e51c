package finetune

// computeNote says, where the job computes in IEEE float32 on a backend
// with TF32 tensor cores (a TF32Setter: the CUDA backend) and leaves
// training.tf32 unset, what the faster compute types would give, or "".
// float32 is the seed's bnb_4bit_compute_dtype, so a user who runs the
// tutorial's settings on a GPU trains ~4x slower than TF32 would and ~10x
// slower than bfloat16 would (H200, BENCHMARKS.md v24: 0.487, 0.109 and
// 0.049 s a step) without being told; unlike the memory note's settings,
// these change the results (TF32 rounds the products' inputs to a 10-bit
// mantissa, bfloat16 everything to an 8-bit one), so the note names the
// trade and changes nothing. training.tf32: false, set on purpose, gets no
// note.
func computeNote(job *Job, b Backend) string {
	if job.Config.Quantization.ComputeDType() != F32 || job.Config.Training.TF32 != nil {
		return ""
	}
	if _, ok := b.(TF32Setter); !ok {
		return ""
	}
	return "note: float32 compute (quantization.bnb_4bit_compute_dtype, the seed's) runs the matrix products in IEEE float32 on " +
		"this GPU's CUDA cores; --set training.tf32=true (TrainingArguments' tf32) runs them on its TF32 tensor cores, about 4x " +
		"faster a step, and --set quantization.bnb_4bit_compute_dtype=bfloat16 computes in bfloat16, about 10x faster (on an " +
		"H200, BENCHMARKS.md v24), each at that type's precision (slightly different losses)"
}
