package api

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/aetherium/aetherium/internal/mcpserver"
)

// mcpHandler serves the Model Context Protocol's streamable HTTP transport at POST /api/v1/mcp (docs/mcp.md).
// It sits behind authenticate like every other route, and its tools call this very router in process with the
// caller's key (mcpserver.HTTPHandler): each tool call is an API request of its own, authenticated, owner-scoped,
// logged and measured like one from the network, so MCP can do nothing the caller's key cannot do through the
// REST API.
func (s *server) mcpHandler() http.Handler {
	return mcpserver.HTTPHandler(s.router, mcpserver.HTTPOptions{
		// The SDK logs every stateless request's session at info: only its warnings and errors are worth keeping.
		Options:      mcpserver.Options{Version: s.version, Logger: slog.New(minLevel{s.log.Handler(), slog.LevelWarn})},
		MaxBodyBytes: s.maxBody,
	})
}

// minLevel drops the records of a handler below a level.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.Handler.Enabled(ctx, l)
}

func (m minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{m.Handler.WithAttrs(as), m.min}
}
func (m minLevel) WithGroup(g string) slog.Handler { return minLevel{m.Handler.WithGroup(g), m.min} }
