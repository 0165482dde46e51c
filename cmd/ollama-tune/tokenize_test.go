package main

import (
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// Row 0 of the Yoda data set, tokenized by transformers (../shared/README.md:
// the chat format starts 32010, 450, 29773, ..., 29889, 32007, 32001).
const yodaRow0 = "The birch canoe slid on the smooth planks."

func TestTokenizeYodaRow0(t *testing.T) {
	dir := testutil.SharedData(t, "phi3-tokenizer")
	sentence := "450 29773 305 508 7297 2243 333 373 278 10597 715 1331 29889"

	out, _, err := runCmd(t, newTokenizeCmd(), "--tokenizer", dir, yodaRow0)
	if err != nil {
		t.Fatal(err)
	}
	if out != sentence+"\n" {
		t.Errorf("tokenize: %q, want %q (no BOS: Phi-3's post-processor adds none)", out, sentence)
	}

	out, _, err = runCmd(t, newTokenizeCmd(), "--tokenizer", dir, "--chat", yodaRow0)
	if err != nil {
		t.Fatal(err)
	}
	if want := "32010 " + sentence + " 32007 32001\n"; out != want {
		t.Errorf("tokenize --chat: %q, want %q", out, want)
	}

	out, _, err = runCmd(t, newTokenizeCmd(), "--tokenizer", dir, "--tokens", "The birch")
	if err != nil {
		t.Fatal(err)
	}
	if want := "450\t\"▁The\"\n29773\t\"▁bir\"\n"; !strings.HasPrefix(out, want) {
		t.Errorf("tokenize --tokens: %q, want it to start %q", out, want)
	}
}

func TestTokenizeErrors(t *testing.T) {
	if _, _, err := runCmd(t, newTokenizeCmd(), "--tokenizer", t.TempDir(), "hi"); err == nil || !strings.Contains(err.Error(), "tokenizer") {
		t.Errorf("empty dir: error %v", err)
	}
	if _, _, err := runCmd(t, newTokenizeCmd(), "hi"); err == nil || !strings.Contains(err.Error(), "tokenizer") {
		t.Errorf("no --tokenizer: error %v", err)
	}
	if _, _, err := runCmd(t, newTokenizeCmd(), "--tokenizer", t.TempDir()); err == nil {
		t.Error("no TEXT: no error")
	}
}
