package safetensors

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// These tests compare against files written by PyTorch and the Python
// safetensors library (testdata/gen_reference.py, run on a machine with
// torch). They skip until the fixtures are committed.

const regen = "run `python3 finetune/safetensors/testdata/gen_reference.py` on a machine with torch and safetensors, then commit finetune/safetensors/testdata/"

func readFixture(t *testing.T, name string, v any) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if os.IsNotExist(err) {
		t.Skipf("testdata/%s is missing: %s", name, regen)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("testdata/%s: %v", name, err)
	}
}

func isNaN32(bits uint32) bool { return bits&0x7F800000 == 0x7F800000 && bits&0x7FFFFF != 0 }
func isNaN16(bits uint16, expMask uint16) bool {
	return bits&expMask == expMask && bits&^(expMask|0x8000) != 0
}

func TestPythonReferenceFile(t *testing.T) {
	var ref struct {
		Metadata map[string]string `json:"metadata"`
		Size     int               `json:"size"`
		Tensors  map[string]struct {
			DType   DType    `json:"dtype"`
			Shape   []int    `json:"shape"`
			Bits    []uint64 `json:"bits"`
			F32Bits []uint32 `json:"f32_bits"`
			Values  []int64  `json:"values"`
		} `json:"tensors"`
	}
	readFixture(t, "reference.json", &ref)
	path := filepath.Join("testdata", "reference.safetensors")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Len() != len(ref.Tensors) {
		t.Errorf("file has %d tensors, reference.json %d", f.Len(), len(ref.Tensors))
	}
	if m := f.Metadata(); len(m) != len(ref.Metadata) || m["format"] != ref.Metadata["format"] {
		t.Errorf("Metadata = %v, want %v", m, ref.Metadata)
	}
	var all []TensorInfo
	for name, want := range ref.Tensors {
		got, err := f.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, got)
		if got.DType != want.DType || !slices.Equal(got.Shape, want.Shape) {
			t.Errorf("%s: %s %v, want %s %v", name, got.DType, got.Shape, want.DType, want.Shape)
			continue
		}
		if want.Values != nil {
			v, err := Int64s(got)
			if err != nil {
				t.Fatal(err)
			}
			for i := range want.Values {
				if v[i] != want.Values[i] {
					t.Errorf("%s[%d] = %d, want %d", name, i, v[i], want.Values[i])
				}
			}
			continue
		}
		size := got.DType.Size()
		for i, b := range want.Bits {
			var have uint64
			for k := size - 1; k >= 0; k-- {
				have = have<<8 | uint64(got.Data[i*size+k])
			}
			if have != b {
				t.Errorf("%s element %d: bits %#x, want %#x", name, i, have, b)
			}
		}
		v, err := ToFloat32(got)
		if err != nil {
			t.Fatal(err)
		}
		for i, wb := range want.F32Bits {
			gb := math.Float32bits(v[i])
			if gb != wb && !(isNaN32(gb) && isNaN32(wb)) {
				t.Errorf("%s element %d as float32: %#08x, want torch's %#08x", name, i, gb, wb)
			}
		}
	}
	// Our writer reproduces Python's file byte for byte.
	var b bytes.Buffer
	if err := Encode(&b, all, f.Metadata()); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	if !bytes.Equal(b.Bytes(), raw) {
		n := min(len(raw), b.Len())
		i := 0
		for i < n && raw[i] == b.Bytes()[i] {
			i++
		}
		t.Errorf("re-encoded file differs from save_file's at byte %d (sizes %d vs %d)\n ours: %q\npython: %q", i, b.Len(), len(raw), b.Bytes()[:min(b.Len(), i+80)], raw[:min(len(raw), i+80)])
	}
}

func TestPythonConversions(t *testing.T) {
	var ref struct {
		F32Bits   []uint32 `json:"f32_bits"`
		ToBF16    []uint16 `json:"to_bf16_bits"`
		ToF16     []uint16 `json:"to_f16_bits"`
		HalfBits  []uint16 `json:"half_bits"`
		BF16ToF32 []uint32 `json:"bf16_to_f32_bits"`
		F16ToF32  []uint32 `json:"f16_to_f32_bits"`
	}
	readFixture(t, "conversions.json", &ref)
	if len(ref.F32Bits) == 0 || len(ref.ToBF16) != len(ref.F32Bits) || len(ref.ToF16) != len(ref.F32Bits) ||
		len(ref.BF16ToF32) != len(ref.HalfBits) || len(ref.F16ToF32) != len(ref.HalfBits) {
		t.Fatalf("conversions.json: inconsistent lengths")
	}
	bad := 0
	for i, b := range ref.F32Bits {
		x := math.Float32frombits(b)
		if got, want := F32ToBF16(x), ref.ToBF16[i]; got != want && !(isNaN32(b) && isNaN16(got, 0x7F80) && isNaN16(want, 0x7F80)) {
			t.Errorf("F32ToBF16(%#08x = %g) = %#04x, torch %#04x", b, x, got, want)
			bad++
		}
		if got, want := F32ToF16(x), ref.ToF16[i]; got != want && !(isNaN32(b) && isNaN16(got, 0x7C00) && isNaN16(want, 0x7C00)) {
			t.Errorf("F32ToF16(%#08x = %g) = %#04x, torch %#04x", b, x, got, want)
			bad++
		}
		if bad > 20 {
			t.Fatal("too many mismatches")
		}
	}
	for i, h := range ref.HalfBits {
		if got := math.Float32bits(BF16ToF32(h)); got != ref.BF16ToF32[i] {
			t.Errorf("BF16ToF32(%#04x) = %#08x, torch %#08x", h, got, ref.BF16ToF32[i])
		}
		if got := math.Float32bits(F16ToF32(h)); got != ref.F16ToF32[i] && !(isNaN32(got) && isNaN32(ref.F16ToF32[i])) {
			t.Errorf("F16ToF32(%#04x) = %#08x, torch %#08x", h, got, ref.F16ToF32[i])
		}
	}
}
