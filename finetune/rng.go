package finetune

import "math"

// Counter-based random numbers: every value is a pure function of
// (seed, index), so the CPU and CUDA backends draw identical dropout masks
// without sharing state, backward regenerates the forward's mask, and a
// resumed run draws what an uninterrupted one would. The CUDA kernels
// implement Mix64, Uniform and DropoutKeep too (cuda/kernels/rng.cuh).

// Mix64 is SplitMix64's finaliser: a bijective 64-bit hash.
func Mix64(x uint64) uint64 {
	x += 0x9E3779B97F4A7C15
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
	x = (x ^ (x >> 27)) * 0x94D049BB133111EB
	return x ^ (x >> 31)
}

// Uniform returns a float32 in [0, 1) for (seed, index): the top 24 bits of
// the hash, so every value is exactly representable.
func Uniform(seed, index uint64) float32 {
	return float32(Mix64(seed^Mix64(index))>>40) * (1.0 / (1 << 24))
}

// DropoutKeep reports whether element index survives dropout with
// probability p under seed. It is the single definition of the dropout
// mask; every CUDA kernel that draws one (cuda/kernels/rng.cuh:
// dropout_keep, lora.cu) implements it bit for bit.
//
// One hash serves an aligned group of four indices (issue 8, v6: the hash
// was most of the instructions of the memory-bound LoRA passes): h =
// DropoutGroupHash(seed, index / 4), and index takes the 16-bit field u =
// (h >> (16 * (index % 4))) & 0xFFFF, kept iff u / 2^16 >= p, i.e. iff u >=
// DropoutThreshold(p). The four fields of a hash are disjoint bits of a
// good 64-bit mix, so the elements of a group are as independent as those
// of different groups. The threshold has a resolution of 2^-16: the keep
// probability is exactly 1 - DropoutThreshold(p)/2^16, which lies in
// (1-p-2^-16, 1-p].
func DropoutKeep(seed, index uint64, p float32) bool {
	h := DropoutGroupHash(seed, index>>2)
	u := uint32(h>>(16*(index&3))) & 0xFFFF
	return float32(u)*(1.0/(1<<16)) >= p
}

// DropoutGroupHash is the hash of dropout group g (indices 4g .. 4g+3)
// under seed: SplitMix64's output for the state seed + g * its increment,
// Mix64(seed + g * 0x9E3779B97F4A7C15), the generator's own stream, which
// passes BigCrush. Issue 8, v7: one Mix64 where v6 took two (Mix64(seed ^
// Mix64(g))); the dropout passes were bound by these instructions. Seeds
// come from DeriveSeed (a hash), so two modules' streams overlap only if
// their seeds differ by a small multiple of the increment (chance ~2^-40).
func DropoutGroupHash(seed, g uint64) uint64 {
	return Mix64(seed + g*0x9E3779B97F4A7C15)
}

// DropoutThreshold is ceil(p * 2^16) (0 for p <= 0, 2^16 for p >= 1 or NaN):
// DropoutKeep keeps index exactly when its 16-bit field is >= it (the
// integer test the CUDA kernels make).
func DropoutThreshold(p float32) uint64 {
	switch {
	case p <= 0:
		return 0
	case !(p < 1): // NaN too: DropoutKeep's comparison is then false
		return 1 << 16
	}
	return uint64(math.Ceil(float64(p) * (1 << 16)))
}

// DeriveSeed makes an independent stream seed from a base seed and a tuple
// of small integers (step, layer, module, ...).
func DeriveSeed(base uint64, parts ...uint64) uint64 {
	s := Mix64(base)
	for _, p := range parts {
		s = Mix64(s ^ Mix64(p+0x632BE59BD9B4E019))
	}
	return s
}

// Normal returns a standard normal float32 for (seed, index) by Box-Muller
// over two uniform draws.
func Normal(seed, index uint64) float32 {
	u1 := float64(Mix64(seed^Mix64(2*index))>>11) * (1.0 / (1 << 53))
	u2 := float64(Mix64(seed^Mix64(2*index+1))>>11) * (1.0 / (1 << 53))
	if u1 < 1e-300 {
		u1 = 1e-300
	}
	return float32(math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*u2))
}
