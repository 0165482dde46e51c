package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/ollama-tune/ollama-tune/plugin"
)

func TestPluginsListsCapabilities(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to build the plugin")
	}
	dir := t.TempDir()
	cpu := filepath.Join(dir, plugin.BinaryPrefix+"cpu")
	if out, err := exec.Command(goTool, "build", "-o", cpu, "../ollama-tune-trainer-cpu").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// A plugin that cannot start: listed, with its error below the table.
	broken := filepath.Join(dir, plugin.BinaryPrefix+"broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho not a plugin >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(plugin.PluginsEnv, dir)
	var out strings.Builder
	opts := plugin.Options{Logger: hclog.NewNullLogger()}
	err = listPlugins(context.Background(), &out, plugin.Discover(), opts)
	if err == nil || !strings.Contains(err.Error(), "1 of 2 trainer plugins failed") {
		t.Errorf("err = %v", err)
	}
	got := out.String()
	t.Logf("\n%s", got)
	for _, re := range []string{
		`(?m)^BACKEND\s+DEVICES\s+DTYPES\s+OPTIMIZERS\s+PROTOCOL\s+VERSION\s+PATH$`,
		`(?m)^broken\s+\(failed to start\)`,
		`(?m)^cpu\s+.*\(\d+(\.\d)? GiB, .*cores\)\s+fp32, bf16 \(emulated\), fp16 \(emulated\)\s+adamw_torch, adamw_8bit, paged_adamw_8bit\s+1\s+dev\s+` + regexp.QuoteMeta(cpu) + `$`,
		`not a plugin`,
	} {
		if !regexp.MustCompile(re).MatchString(got) {
			t.Errorf("output does not match %s", re)
		}
	}

	if err := listPlugins(context.Background(), &out, nil, opts); err == nil || !strings.Contains(err.Error(), "make build") {
		t.Errorf("no plugins: err = %v", err)
	}
}
