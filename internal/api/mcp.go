package api

import (
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
		Options:      mcpserver.Options{Version: s.version, Logger: s.log},
		MaxBodyBytes: s.maxBody,
	})
}
