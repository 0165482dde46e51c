package nf4

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"
	"testing"
)

// The self-test pattern is built the same way by selftest_pattern() in
// ../testdata/nf4_ref.py. `python nf4_ref.py --selftest` prints the digests
// below; PyTorch 2.11 on the reference GPU machine (CPU and CUDA) and
// PyTorch 1.13 on the development machine printed exactly these, so Go and
// the Python reference quantize bit-identically (and DynamicMap equals the
// map bitsandbytes builds under PyTorch 2.11).
const patternOut, patternIn = 301, 129 // odd element count, 607 blocks, 3 absmax blocks

var selftestDigests = []struct{ name, sha string }{
	{"dynamic_map_signed", "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c"},
	{"dynamic_map_unsigned", "305f002cc11278fb769d13b25b9fd0c7c83c8402c40a878fe086f4039fde6398"},
	{"plain_codes", "deb0f06654fb2a98341b3e5a76959af52b47b56d9c2390a16780a4a795b17928"},
	{"plain_absmax", "a0325a3c6a2fa4dd6c66873b46ebcd865980e91c240cdc381c288ec2814af28c"},
	{"plain_dequant", "6cab268e388834e18fc31d35a39abf5efe1ef43a28991e9e4f54fb3d77760d96"},
	{"dq_codes", "deb0f06654fb2a98341b3e5a76959af52b47b56d9c2390a16780a4a795b17928"},
	{"dq_absmax_codes", "3acd8cbd7dc94749ced98426245f9f5bb341feecf756f0f4b95385246e685c82"},
	{"dq_absmax_scales", "5677bd2d55a44f546099cf271d28fcb8396e00285ab88ad6823d297ac92b52b1"},
	{"dq_absmax_offset", "5552192a26fc3974435095016f13a8fb03925ffacc37f10d071caa6ef5e63e0a"},
	{"dq_dequant", "36bb246fc4a64577b634cb5f1aaffd3b4f6985e2ace3562d7c348d6a15ceee36"},
}

// pattern is a deterministic [301, 129] weight with a zero block, a block
// that hits every code exactly and a block on the tree's thresholds.
func pattern() []float32 {
	n := patternOut * patternIn
	w := make([]float32, n)
	for i := range w {
		u := (uint64(i)*2654435761 + 12345) % (1 << 32)
		base := float32(int64(u>>8)-(1<<23)) * (1.0 / (1 << 23))
		scale := float32(i/patternIn%11+1) / 8
		w[i] = base * scale
	}
	for i := 5 * patternIn; i < 6*patternIn; i++ {
		w[i] = 0 // block 11 (values 704..767) is all zeros
	}
	for j := 0; j < 64; j++ {
		w[20*64+j] = Codebook[j%16] * 0.5
	}
	b := 30 * 64
	w[b] = 1
	for j := 1; j < 64; j++ {
		t := thresholds[(j-1)%15]
		switch (j - 1) / 15 {
		case 0:
			w[b+j] = t
		case 1:
			w[b+j] = math.Nextafter32(t, float32(math.Inf(1)))
		case 2:
			w[b+j] = math.Nextafter32(t, float32(math.Inf(-1)))
		default:
			w[b+j] = -1
		}
	}
	return w
}

func shaBytes(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func shaF32(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return shaBytes(b)
}

// TestSelfTestMatchesPythonReference is the Go half of
// `python finetune/testdata/nf4_ref.py --selftest`.
func TestSelfTestMatchesPythonReference(t *testing.T) {
	w := pattern()
	n := len(w)
	got := map[string]string{}
	sm, um := DynamicMap(true), DynamicMap(false)
	got["dynamic_map_signed"] = shaF32(sm[:])
	got["dynamic_map_unsigned"] = shaF32(um[:])

	q := Quantize(w, patternOut, patternIn, false)
	deq := make([]float32, n)
	q.Dequantize(deq)
	got["plain_codes"] = shaBytes(q.Codes)
	got["plain_absmax"] = shaF32(q.Absmax)
	got["plain_dequant"] = shaF32(deq)

	q = Quantize(w, patternOut, patternIn, true)
	q.Dequantize(deq)
	got["dq_codes"] = shaBytes(q.Codes)
	got["dq_absmax_codes"] = shaBytes(q.AbsmaxCodes)
	got["dq_absmax_scales"] = shaF32(q.AbsmaxScales)
	got["dq_absmax_offset"] = shaF32([]float32{q.AbsmaxOffset})
	got["dq_dequant"] = shaF32(deq)

	for _, d := range selftestDigests {
		t.Logf("%s %s", d.name, got[d.name])
		if got[d.name] != d.sha {
			t.Errorf("%s: Go digest %s, Python reference printed %s", d.name, got[d.name], d.sha)
		}
	}
}
