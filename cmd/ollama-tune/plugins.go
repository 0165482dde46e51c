package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ollama-tune/ollama-tune/plugin"
)

var pluginsCmd = &cobra.Command{
	Use:   "plugins",
	Short: "List the trainer plugins found and what each can do",
	Long: `List the trainer plugins (` + plugin.BinaryPrefix + `<backend>) found in
$` + plugin.PluginsEnv + ` (colon-separated directories, searched first) and next to
the ollama-tune executable. Each is started to ask its capabilities: backend,
devices and memory, compute dtypes, optimizers and protocol version.`,
	Args: cobra.NoArgs,
	RunE: func(cmd *cobra.Command, _ []string) error {
		return listPlugins(cmd.Context(), cmd.OutOrStdout(), plugin.Discover(), plugin.Options{})
	},
}

func init() { rootCmd.AddCommand(pluginsCmd) }

// listPlugins starts each plugin, asks its capabilities and prints a table;
// a plugin that fails to start gets a row saying so and its full error below.
func listPlugins(ctx context.Context, w io.Writer, bins []plugin.Binary, opts plugin.Options) error {
	if len(bins) == 0 {
		return fmt.Errorf("no trainer plugins (%s*) found in %s; build them with `make build`, or point $%s at their directory",
			plugin.BinaryPrefix, strings.Join(plugin.SearchDirs(), ", "), plugin.PluginsEnv)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKEND\tDEVICES\tDTYPES\tOPTIMIZERS\tPROTOCOL\tVERSION\tPATH")
	var failures []string
	for _, b := range bins {
		caps, err := queryCapabilities(ctx, b, opts)
		if err != nil {
			fmt.Fprintf(tw, "%s\t(failed to start)\t-\t-\t-\t-\t%s\n", b.Backend, b.Path)
			failures = append(failures, fmt.Sprintf("%s: %v", b.Name(), err))
			continue
		}
		var dtypes []string
		for _, d := range caps.ComputeDTypes {
			dtypes = append(dtypes, d.String())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", caps.Backend, devices(caps.Devices),
			strings.Join(dtypes, ", "), strings.Join(caps.Optimizers, ", "),
			caps.ProtocolVersion, caps.TrainerVersion, b.Path)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(failures) > 0 {
		fmt.Fprintln(w)
		for _, f := range failures {
			fmt.Fprintln(w, f)
		}
		return fmt.Errorf("%d of %d trainer plugins failed to start", len(failures), len(bins))
	}
	return nil
}

func queryCapabilities(ctx context.Context, b plugin.Binary, opts plugin.Options) (plugin.Capabilities, error) {
	p, err := plugin.Launch(b, opts)
	if err != nil {
		return plugin.Capabilities{}, err
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return p.Capabilities(ctx)
}

// devices prints "name (23.4 GiB, 12.0 GiB free, 2 cores)" per device.
func devices(ds []plugin.Device) string {
	if len(ds) == 0 {
		return "none"
	}
	var out []string
	for _, d := range ds {
		var attrs []string
		if d.TotalMemory > 0 {
			attrs = append(attrs, plugin.FormatBytes(d.TotalMemory))
		}
		if d.FreeMemory > 0 {
			attrs = append(attrs, plugin.FormatBytes(d.FreeMemory)+" free")
		}
		if d.Detail != "" {
			attrs = append(attrs, d.Detail)
		}
		s := d.Name
		if len(attrs) > 0 {
			s += " (" + strings.Join(attrs, ", ") + ")"
		}
		out = append(out, s)
	}
	return strings.Join(out, "; ")
}
