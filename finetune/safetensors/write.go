package safetensors

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"

	"github.com/ollama-tune/ollama-tune/internal/atomicfile"
)

// Write stores tensors and metadata as a safetensors file at path. The file
// is written to a temporary file in the same directory, synced, then
// renamed over path, so a crash never leaves a half-written file under the
// final name. The tensors' Data are written one after another and never
// copied, so they may alias memory maps of other files.
//
// The layout is the Python library's (safetensors.torch.save_file): tensors
// sorted by descending dtype alignment, then by name, the header padded
// with spaces to a multiple of 8 bytes, __metadata__ first. For the same
// tensors and at most one metadata key the bytes are identical to
// save_file's (with more keys, Python's order is a hash order; ours is
// sorted).
func Write(path string, tensors []TensorInfo, metadata map[string]string) error {
	for _, t := range tensors {
		if err := t.checkData(); err != nil {
			return fmt.Errorf("write %s: tensor %q: %w", path, t.Name, err)
		}
	}
	return WriteFunc(path, tensors, metadata, func(i int, w io.Writer) error {
		_, err := w.Write(tensors[i].Data)
		return err
	})
}

// WriteFunc is Write for data produced on the fly: headers give each
// tensor's name, dtype and shape (Data is ignored), and fill(i, w) must
// write exactly the bytes of headers[i]. fill is called once per tensor in
// file order, so a converter can hold one tensor at a time (an 8 GB model
// never sits in memory twice).
func WriteFunc(path string, headers []TensorInfo, metadata map[string]string, fill func(i int, w io.Writer) error) error {
	return atomicfile.Write(path, func(f *os.File) error {
		bw := bufio.NewWriterSize(f, 4<<20)
		if err := encode(bw, headers, metadata, fill); err != nil {
			return err
		}
		return bw.Flush()
	})
}

// Encode writes a safetensors image of tensors to w (Write without the
// file handling: tests, in-memory images).
func Encode(w io.Writer, tensors []TensorInfo, metadata map[string]string) error {
	for _, t := range tensors {
		if err := t.checkData(); err != nil {
			return fmt.Errorf("tensor %q: %w", t.Name, err)
		}
	}
	return encode(w, tensors, metadata, func(i int, w io.Writer) error {
		_, err := w.Write(tensors[i].Data)
		return err
	})
}

// header builds the padded JSON header for tensors in file order and
// returns it with that order (indices into headers).
func header(headers []TensorInfo, metadata map[string]string) ([]byte, []int, error) {
	order := make([]int, len(headers))
	names := map[string]bool{}
	for i, t := range headers {
		order[i] = i
		if err := checkDType(t.DType); err != nil {
			return nil, nil, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		if _, err := numel(t.Shape, t.DType.Size()); err != nil {
			return nil, nil, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		if t.Name == "__metadata__" {
			return nil, nil, errors.New("a tensor cannot be named \"__metadata__\" (the header's metadata key)")
		}
		if names[t.Name] {
			return nil, nil, fmt.Errorf("tensor %q is given twice", t.Name)
		}
		names[t.Name] = true
	}
	sort.SliceStable(order, func(a, b int) bool {
		ta, tb := headers[order[a]], headers[order[b]]
		if ra, rb := dtypeRank[ta.DType], dtypeRank[tb.DType]; ra != rb {
			return ra > rb
		}
		return ta.Name < tb.Name
	})

	var h bytes.Buffer
	h.WriteByte('{')
	if len(metadata) > 0 {
		h.WriteString(`"__metadata__":{`)
		keys := make([]string, 0, len(metadata))
		for k := range metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for i, k := range keys {
			if i > 0 {
				h.WriteByte(',')
			}
			writeJSONString(&h, k)
			h.WriteByte(':')
			writeJSONString(&h, metadata[k])
		}
		h.WriteByte('}')
	}
	off := 0
	for i, idx := range order {
		t := headers[idx]
		if i > 0 || len(metadata) > 0 {
			h.WriteByte(',')
		}
		n, _ := numel(t.Shape, t.DType.Size())
		size := n * t.DType.Size()
		writeJSONString(&h, t.Name)
		h.WriteString(`:{"dtype":`)
		writeJSONString(&h, string(t.DType))
		h.WriteString(`,"shape":[`)
		for j, d := range t.Shape {
			if j > 0 {
				h.WriteByte(',')
			}
			h.WriteString(strconv.Itoa(d))
		}
		fmt.Fprintf(&h, `],"data_offsets":[%d,%d]}`, off, off+size)
		off += size
	}
	h.WriteByte('}')
	for h.Len()%8 != 0 {
		h.WriteByte(' ')
	}
	return h.Bytes(), order, nil
}

// writeJSONString writes s as serde_json does: only '"', '\\' and control
// characters are escaped (no HTML escaping).
func writeJSONString(b *bytes.Buffer, s string) {
	var tmp bytes.Buffer
	enc := json.NewEncoder(&tmp)
	enc.SetEscapeHTML(false)
	enc.Encode(s) // a string always encodes
	b.Write(bytes.TrimSuffix(tmp.Bytes(), []byte("\n")))
}

// countingWriter checks that fill writes exactly a tensor's size.
type countingWriter struct {
	w io.Writer
	n int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += n
	return n, err
}

func encode(w io.Writer, headers []TensorInfo, metadata map[string]string, fill func(i int, w io.Writer) error) error {
	h, order, err := header(headers, metadata)
	if err != nil {
		return err
	}
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(h)))
	if _, err := w.Write(n[:]); err != nil {
		return err
	}
	if _, err := w.Write(h); err != nil {
		return err
	}
	for _, idx := range order {
		t := headers[idx]
		cnt, _ := numel(t.Shape, t.DType.Size())
		want := cnt * t.DType.Size()
		cw := &countingWriter{w: w}
		if err := fill(idx, cw); err != nil {
			return fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		if cw.n != want {
			return fmt.Errorf("tensor %q: %d bytes were written, but dtype %s shape %v needs %d", t.Name, cw.n, t.DType, t.Shape, want)
		}
	}
	return nil
}
