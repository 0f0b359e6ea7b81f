package api

import (
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/aetherium/aetherium/internal/auth"
)

// routeScopes returns "METHOD /route" -> declared scope ("" for none) for every route under /api/v1.
func routeScopes(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := chi.Walk(newServer(Config{}).router, func(method, route string, _ http.Handler, mws ...func(http.Handler) http.Handler) error {
		if strings.HasPrefix(route, "/api/v1/") {
			out[method+" "+route] = declaredScope(mws)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestEveryRouteHasAScope fails when an authenticated route is registered without s.require, and when
// openapi.yaml's x-aetherium-scope of an operation is not the router's.
func TestEveryRouteHasAScope(t *testing.T) {
	scopes := routeScopes(t)
	if len(scopes) < 40 {
		t.Fatalf("walk found only %d routes", len(scopes))
	}
	known := append(slices.Clone(auth.AllScopes), noScope)
	ops := operations(t, loadDoc(t))
	names := make([]string, 0, len(scopes))
	for n := range scopes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		sc := scopes[name]
		if os.Getenv("PRINT_SCOPES") != "" {
			t.Logf("SCOPE %s %s", name, sc)
		}
		public := slices.Contains(publicRoutes, name)
		switch {
		case public && sc != "":
			t.Errorf("public route %s declares scope %q", name, sc)
		case !public && sc == "":
			t.Errorf("route %s declares no scope: register it with r.With(s.require(scope))", name)
		case !public && !slices.Contains(known, sc):
			t.Errorf("route %s declares unknown scope %q", name, sc)
		}
		if op, ok := ops[name]; ok && op.Scope != sc {
			t.Errorf("openapi.yaml: %s has x-aetherium-scope %q, the router requires %q", name, op.Scope, sc)
		}
	}
}
