package auth

import (
	"fmt"
	"slices"
	"time"

	"github.com/aetherium/aetherium/internal/model"
)

// Scopes: what a credential may do. Every route of the API declares the one it needs (internal/api); a key with
// no scopes of its own has every scope of its role.
const (
	ScopeVMsRead       = "vms:read"      // read VMs, executions, tasks, jobs, logs, events, status, agents
	ScopeVMsWrite      = "vms:write"     // create, delete and change VMs (lifecycle, tools)
	ScopeExec          = "exec"          // run commands: executions, jobs, processes, shells
	ScopeFiles         = "files"         // read and write files in VMs
	ScopeRuns          = "runs"          // agent runs
	ScopeSecrets       = "secrets"       // the owner's secrets
	ScopeIntegrations  = "integrations"  // integration links
	ScopeNotifications = "notifications" // notification rules and deliveries
	ScopeAdmin         = "admin"         // API keys and the audit log; only role admin may hold it
)

// AllScopes lists every scope, in a stable order.
var AllScopes = []string{ScopeVMsRead, ScopeVMsWrite, ScopeExec, ScopeFiles, ScopeRuns, ScopeSecrets,
	ScopeIntegrations, ScopeNotifications, ScopeAdmin}

// RoleScopes returns every scope the role may hold: an admin all of them, a user all but admin.
func RoleScopes(role string) []string {
	if role == model.RoleAdmin {
		return slices.Clone(AllScopes)
	}
	return slices.DeleteFunc(slices.Clone(AllScopes), func(s string) bool { return s == ScopeAdmin })
}

// ValidRole reports whether role is admin or user.
func ValidRole(role string) bool { return role == model.RoleAdmin || role == model.RoleUser }

// CheckScopes returns an error naming the first scope that is unknown or that role may not hold.
func CheckScopes(role string, scopes []string) error {
	allowed := RoleScopes(role)
	for _, s := range scopes {
		if !slices.Contains(AllScopes, s) {
			return fmt.Errorf("unknown scope %q (known: %v)", s, AllScopes)
		}
		if !slices.Contains(allowed, s) {
			return fmt.Errorf("scope %q needs role admin", s)
		}
	}
	return nil
}

// EffectiveScopes are the scopes k grants: its own, within its role's, or every scope of its role.
func EffectiveScopes(k *model.APIKey) []string {
	role := RoleScopes(k.Role)
	if len(k.Scopes) == 0 {
		return role
	}
	return slices.DeleteFunc(slices.Clone(k.Scopes), func(s string) bool { return !slices.Contains(role, s) })
}

// Principal is who made a request: the key, or the key a JWT was issued for, with what it may do.
type Principal struct {
	KeyID   string
	OwnerID string
	Role    string
	Scopes  []string
	// Via is "api_key" or "jwt".
	Via string
	// ExpiresAt is when the credential stops working (nil: never).
	ExpiresAt *time.Time
}

// Credential kinds of Principal.Via.
const (
	ViaAPIKey = "api_key"
	ViaJWT    = "jwt"
)

// Has reports whether p holds scope; the admin scope also needs role admin.
func (p *Principal) Has(scope string) bool {
	if scope == ScopeAdmin && p.Role != model.RoleAdmin {
		return false
	}
	return slices.Contains(p.Scopes, scope)
}

// IsAdmin reports whether p acts with role admin.
func (p *Principal) IsAdmin() bool { return p.Role == model.RoleAdmin }

func principalOf(k *model.APIKey) *Principal {
	return &Principal{KeyID: k.ID, OwnerID: k.OwnerID, Role: k.Role, Scopes: EffectiveScopes(k), Via: ViaAPIKey,
		ExpiresAt: k.ExpiresAt}
}
