package tokenizer

// queue is a binary heap whose pop returns the item that comes before all
// the others: BPE's merge queue (mergeItem) and SentencePiece's agenda of
// symbol pairs (spPair), each with its own order.
type queue[T interface{ before(T) bool }] struct{ a []T }

func (h *queue[T]) len() int { return len(h.a) }

func (h *queue[T]) push(it T) {
	h.a = append(h.a, it)
	i := len(h.a) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h.a[i].before(h.a[p]) {
			break
		}
		h.a[i], h.a[p] = h.a[p], h.a[i]
		i = p
	}
}

func (h *queue[T]) pop() T {
	top := h.a[0]
	last := len(h.a) - 1
	h.a[0] = h.a[last]
	h.a = h.a[:last]
	i := 0
	for {
		l, r, first := 2*i+1, 2*i+2, i
		if l < last && h.a[l].before(h.a[first]) {
			first = l
		}
		if r < last && h.a[r].before(h.a[first]) {
			first = r
		}
		if first == i {
			break
		}
		h.a[i], h.a[first] = h.a[first], h.a[i]
		i = first
	}
	return top
}
