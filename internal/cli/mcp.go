package cli

import (
	"context"
	"errors"
	"io"
	"log/slog"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/internal/mcpserver"
	"github.com/aetherium/aetherium/pkg/client"
)

// mcpCommand serves the Model Context Protocol on stdin/stdout: an MCP client (claude-code, an IDE) starts
// `aetherium mcp` and its tools call the API at --server with the configured key, like every other command. The
// protocol owns stdout; errors and the SDK's warnings go to stderr, which MCP clients keep as the server's log.
func (a *app) mcpCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mcp",
		Short: "Serve Aetherium's tools to an AI agent over MCP (stdio)",
		Long: `Serve the Model Context Protocol on stdin and stdout, so an AI agent can create sandboxes, run commands
and work with files in them. The tools act through the API at --server (` + EnvServer + `) with the API key
(` + EnvAPIKey + `), as the key's owner. Add it to claude-code with:

  claude mcp add --env ` + EnvServer + `=http://127.0.0.1:8080 --env ` + EnvAPIKey + `=KEY aetherium -- aetherium mcp

See docs/mcp.md for the tools and for the gateway's HTTP endpoint (/api/v1/mcp).`,
	}
	return a.leaf(cmd, cobra.NoArgs, 1, func(ctx context.Context, c *client.Client, _ *cobra.Command, _ []string) error {
		log := slog.New(slog.NewTextHandler(a.streams.ErrOut, &slog.HandlerOptions{Level: slog.LevelWarn}))
		srv := mcpserver.New(c, mcpserver.Options{Version: a.version, Logger: log})
		err := srv.Run(ctx, &mcp.IOTransport{Reader: io.NopCloser(a.streams.In), Writer: nopWriteCloser{a.streams.Out}})
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return nil // a signal or --timeout ended the server: a normal end
		}
		return err
	})
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
