// Package data turns a data set on disk (CSV, JSON, JSONL, Parquet; local or
// from the Hugging Face Hub) into the micro-batches a fine-tune trains on,
// with TRL 0.23's SFTTrainer semantics:
//
//	read (csv.go, json.go, parquet.go)      rows of named values, errors by file and line
//	map (source.go)                         rename/remove columns, typed Examples
//	shuffle, split (split.go)               seeded, datasets' train_test_split sizes
//	tokenize (sft.go)                       chat template or plain text, EOS, completion mask
//	truncate or pack (pack.go)              max_length; "bfd" or "wrapped" packing
//	collate (collate.go)                    Batch{B, S, InputIDs, PositionIDs, Labels}
//	plan (plan.go)                          examples, tokens, sequences, steps per epoch
//
// It depends on finetune/chat for templates and on small interfaces
// (Tokenizer, Resolver) for the tokenizer and the Hub client, so that it
// imports nothing else of the project.
package data
