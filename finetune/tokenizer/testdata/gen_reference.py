#!/usr/bin/env python3
"""Reference token ids for finetune/tokenizer's tests.

Run on the GPU machine (Python 3.12, transformers 5.x, tokenizers, jinja2;
no network):

    python3 finetune/tokenizer/testdata/gen_reference.py \
        --tokenizer ../shared/data/phi3-tokenizer \
        --csv ../shared/data/yoda_sentences.csv \
        --out finetune/tokenizer/testdata

It writes OUT/reference.json, one JSON object per line inside "rows",
"hard" and "decode_cases", with ids from three tokenizers:

  a: tokenizers.Tokenizer.from_file(tokenizer.json)  -- the reference (the
     seed's transformers 4.x fast tokenizer applied tokenizer.json as written)
  b: AutoTokenizer.from_pretrained(dir, legacy=True)
  c: AutoTokenizer.from_pretrained(dir)               -- transformers 5 default

all with add_special_tokens=False unless a key says otherwise. Each row is
the seed's conversation: user = sentence, assistant = translation_extra,
rendered with the tokenizer's chat template.
"""

import argparse
import csv
import json
import os
import sys

import tokenizers
import transformers
from tokenizers import Tokenizer
from transformers import AutoTokenizer

# Facts from shared/README.md.
ROW0_PREFIX = [32010, 450, 29773, 305, 508, 7297, 2243, 333, 373, 278, 10597, 715, 1331, 29889, 32007, 32001]
TOTAL_A = 21801
TOTAL_C = 22018

# Keep in step with hardStrings in tokenizer_test.go (the Go test reads the
# texts from reference.json, so a difference only means less coverage).
HARD = [
    "",
    " ",
    "   ",
    "Hello world",
    " Hello",
    "Hello ",
    "  two  spaces  between  ",
    "a\tb\t\tc",
    "line1\nline2",
    "\n",
    "\n\n\n",
    "\r\n",
    "windows\r\nline\r\n",
    "trailing newline\n",
    "naïve café résumé",
    "e\u0301 combining acute",
    "ﬁ ligature and ² superscript",
    "日本語のテキストです。",
    "中文字符测试",
    "한국어 텍스트",
    "Привет, мир!",
    "emoji 😀🎉👍🏽",
    "👨‍👩‍👧‍👦 family",
    "\u00a0non-breaking\u00a0space",
    "zero\u200bwidth",
    "Ω≈ç√∫˜µ≤≥÷",
    "1234567890 3.14159 1,000,000",
    "Strong in you, the Force is! Hrrrm.",
    "\"Quoted\" and 'single' and `back`",
    "▁already▁metaspace",
    "<0x0A>",
    "<0xZZ> not a byte",
    "<|notatoken|>",
    "< |user| >",
    "<s>",
    "</s>",
    "<unk>",
    "<|user|>",
    "mid<|user|>word",
    "<|user|>\nThe birch canoe.<|end|>\n<|assistant|>\n",
    "<s> hi",
    "a<s>b",
    "x </s>  y",
    "hello <|assistant|>   \n\t world",
    "<|end|><|end|>",
    "<|endoftext|>",
    "<|placeholder1|>text",
    "a" * 300,
    "supercalifragilistic" * 40,
    "ab " * 200,
    "\x00null\x01ctrl",
    "tab\tat end\t",
]

# Id lists whose decode is recorded: byte pieces (valid and invalid UTF-8),
# leading-space stripping, special tokens, an id past the vocabulary.
DECODE_CASES = [
    [13],
    [3 + 0xE6],
    [3 + 0xE6, 3 + 0x97],
    [3 + 0xE6, 3 + 0x97, 3 + 0xA5],
    [450, 29773, 305],
    [29871, 450],
    [29871, 29871, 450],
    [32010, 450, 32007],
    [1, 450, 2],
    [32000, 32001, 32007, 32010, 0],
    [1576, 29871, 13, 450],
]


def line(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, help="folder with tokenizer.json, tokenizer_config.json, ...")
    ap.add_argument("--csv", required=True, help="yoda_sentences.csv")
    ap.add_argument("--out", required=True, help="folder to write reference.json into")
    args = ap.parse_args()

    tok_a = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    tok_b = AutoTokenizer.from_pretrained(args.tokenizer, legacy=True)
    tok_c = AutoTokenizer.from_pretrained(args.tokenizer)

    def ids_a(text, add=False):
        return tok_a.encode(text, add_special_tokens=add).ids

    def ids_hf(tok, text, add=False):
        return list(tok(text, add_special_tokens=add)["input_ids"])

    with open(args.csv, newline="", encoding="utf-8") as f:
        data = list(csv.DictReader(f))
    print(f"{len(data)} rows from {args.csv}")

    rows = []
    for i, r in enumerate(data):
        conv = [{"role": "user", "content": r["sentence"]}, {"role": "assistant", "content": r["translation_extra"]}]
        text = tok_c.apply_chat_template(conv, tokenize=False)
        prompt = tok_c.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
        rows.append({
            "i": i,
            "text": text,
            "prompt": prompt,
            "a": ids_a(text),
            "b": ids_hf(tok_b, text),
            "c": ids_hf(tok_c, text),
            "prompt_a": ids_a(prompt),
            "prompt_c": ids_hf(tok_c, prompt),
        })

    hard = []
    for text in HARD:
        a, b, c = ids_a(text), ids_hf(tok_b, text), ids_hf(tok_c, text)
        hard.append({
            "text": text,
            "a": a,
            "b": b,
            "c": c,
            "a_decode": tok_a.decode(a, skip_special_tokens=False),
            "a_decode_skip": tok_a.decode(a, skip_special_tokens=True),
            "c_decode": tok_c.decode(c, skip_special_tokens=False),
            "c_decode_skip": tok_c.decode(c, skip_special_tokens=True),
        })

    decode_cases = []
    for ids in DECODE_CASES:
        decode_cases.append({
            "ids": ids,
            "a": tok_a.decode(ids, skip_special_tokens=False),
            "a_skip": tok_a.decode(ids, skip_special_tokens=True),
            "c": tok_c.decode(ids, skip_special_tokens=False),
            "c_skip": tok_c.decode(ids, skip_special_tokens=True),
        })

    row0 = rows[0]["text"]
    meta = {
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "python": sys.version.split()[0],
        "b_class": type(tok_b).__name__,
        "c_class": type(tok_c).__name__,
        "row0_a_add_special": ids_a(row0, add=True),
        "row0_b_add_special": ids_hf(tok_b, row0, add=True),
        "row0_c_add_special": ids_hf(tok_c, row0, add=True),
        "len_c": len(tok_c),
        "special_c": {
            "bos": [tok_c.bos_token, tok_c.bos_token_id],
            "eos": [tok_c.eos_token, tok_c.eos_token_id],
            "unk": [tok_c.unk_token, tok_c.unk_token_id],
            "pad": [tok_c.pad_token, tok_c.pad_token_id],
        },
        "totals": {k: sum(len(r[k]) for r in rows) for k in ("a", "b", "c", "prompt_a", "prompt_c")},
    }

    # The facts the Go tests were written against.
    got = rows[0]["a"][: len(ROW0_PREFIX)]
    assert got == ROW0_PREFIX, f"row 0 (a) starts {got}, README says {ROW0_PREFIX}"
    print("row 0 (a):", rows[0]["a"])
    print("row 0 (b):", rows[0]["b"][:20], "...")
    print("row 0 (c):", rows[0]["c"][:20], "...")
    print("row 0 with add_special_tokens=True: a", meta["row0_a_add_special"][:3],
          "b", meta["row0_b_add_special"][:3], "c", meta["row0_c_add_special"][:3])
    print("totals:", meta["totals"])
    for key, want in (("a", TOTAL_A), ("c", TOTAL_C)):
        if meta["totals"][key] != want:
            print(f"WARNING: total ({key}) is {meta['totals'][key]}, README says {want}")
    diff_ab = sum(r["a"] != r["b"] for r in rows)
    diff_hard_ab = sum(h["a"] != h["b"] for h in hard)
    print(f"(a) vs (b): {diff_ab} rows and {diff_hard_ab} hard strings differ")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "reference.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("{\n")
        f.write('"meta": ' + line(meta) + ",\n")
        for name, items in (("rows", rows), ("hard", hard), ("decode_cases", decode_cases)):
            f.write(f'"{name}": [\n')
            f.write(",\n".join(line(x) for x in items))
            f.write("\n]" + (",\n" if name != "decode_cases" else "\n"))
        f.write("}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    print(f"wrote {path} ({os.path.getsize(path):,} bytes)")


if __name__ == "__main__":
    main()
