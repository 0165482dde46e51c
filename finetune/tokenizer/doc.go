// Package tokenizer is a token-exact Go port of the Hugging Face tokenizer
// pipeline that Llama, Mistral and Phi-3 style models ship: a BPE model with
// byte fallback, added (special) tokens, the normalizers, pre-tokenizers and
// decoders those tokenizer.json files use, and a fallback reader for the
// SentencePiece tokenizer.model they derive from.
//
// The reference is the `tokenizers` library applied to tokenizer.json as
// written (Tokenizer.from_file(...).encode(text, add_special_tokens=...)),
// which is also what the seed's transformers 4.x fast tokenizer did. The steps
// follow tokenizers/src/tokenizer/mod.rs:
//
//  1. split the raw text on the added tokens that are not normalized
//     (leftmost-longest match, then lstrip/rstrip eat neighbouring whitespace);
//  2. normalize each remaining segment on its own (for Phi-3: Prepend("▁")
//     and Replace(" ", "▁"), so every segment that follows a special token
//     gets its own leading "▁": the "legacy" behaviour), then split it on the
//     normalized added tokens;
//  3. pre-tokenize (none for Phi-3, so the whole segment is one BPE word);
//  4. BPE by merge rank, with byte fallback to <0xXX> pieces;
//  5. the post-processor when special tokens are asked for (Phi-3's
//     TemplateProcessing adds nothing: no BOS, matching add_bos_token=false).
//
// Options.Legacy=false reproduces transformers 5's default LlamaTokenizer
// instead, which rebuilds the pipeline from vocab and merges with no
// normalizer and a Metaspace(prepend_scheme="first", split=false)
// pre-tokenizer: only a segment at the very start of the text gets a "▁".
package tokenizer
