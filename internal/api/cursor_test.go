package api

import (
	"net/http"
	"testing"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/pkg/client"
)

// TestMalformedCursor: a cursor that is not one the API returned is refused with 422 on every paginated route,
// never taken for the first page.
func TestMalformedCursor(t *testing.T) {
	e := newEnv(t, nil)
	vm := e.createVM(e.keyA, "v")
	for _, path := range []string{"/api/v1/vms", "/api/v1/vms/" + vm.VM.ID + "/executions", "/api/v1/runs"} {
		for _, cur := range []string{"not-a-cursor", uuid.NewString(), "%00", "x&cursor=y"} {
			r := e.call("GET", path+"?cursor="+cur, e.keyA, "")
			if r.status != http.StatusUnprocessableEntity || r.errCode() != client.CodeValidation {
				t.Errorf("GET %s?cursor=%s: %d %s, want 422", path, cur, r.status, r.body)
			}
		}
	}
}
