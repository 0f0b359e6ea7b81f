package client

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// IntegrationLink links an outside source (a GitHub repository "github.com/org/repo" or organisation
// "github.com/org/*", a Slack team/channel "T123/C456", a Discord channel) to the caller, and says what it may do.
type IntegrationLink struct {
	ID          string `json:"id"`
	Integration string `json:"integration"`
	Source      string `json:"source"`
	Commands    bool   `json:"commands"`
	Runs        bool   `json:"runs"`
	AllowBots   bool   `json:"allow_bots"`
	DraftPR     bool   `json:"draft_pr"`
	PRCommand   string `json:"pr_command,omitempty"`
	// AllowedCommands, when set, are the only commands the source may run (exact, or "cmd *" for cmd with plain
	// arguments).
	AllowedCommands []string  `json:"allowed_commands,omitempty"`
	Notify          []string  `json:"notify,omitempty"`
	CreatedAt       time.Time `json:"created_at"`
}

// CreateIntegrationLinkRequest is the body of POST /api/v1/integrations/links. Commands and Runs default to true
// when both are omitted.
type CreateIntegrationLinkRequest struct {
	Integration string `json:"integration"`
	Source      string `json:"source"`
	Commands    *bool  `json:"commands,omitempty"`
	Runs        *bool  `json:"runs,omitempty"`
	AllowBots   bool   `json:"allow_bots,omitempty"`
	DraftPR     bool   `json:"draft_pr,omitempty"`
	// PRCommand runs on every pull request opened, reopened or pushed to (GitHub), reported as a check run.
	PRCommand string `json:"pr_command,omitempty"`
	// AllowedCommands, when set, are the only commands the source may run: exact commands, or "cmd *" for cmd
	// followed by plain arguments. Empty: any command.
	AllowedCommands []string `json:"allowed_commands,omitempty"`
	Notify          []string `json:"notify,omitempty"`
}

// IntegrationLinkList is the answer of GET /api/v1/integrations/links.
type IntegrationLinkList struct {
	Links []IntegrationLink `json:"links"`
}

// CreateIntegrationLink links a source to the caller.
func (c *Client) CreateIntegrationLink(ctx context.Context, req CreateIntegrationLinkRequest) (*IntegrationLink, error) {
	var l IntegrationLink
	if _, err := c.do(ctx, http.MethodPost, "/integrations/links", nil, req, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// ListIntegrationLinks lists the caller's links, of one integration when integration is set.
func (c *Client) ListIntegrationLinks(ctx context.Context, integration string) (*IntegrationLinkList, error) {
	var q url.Values
	if integration != "" {
		q = url.Values{"integration": {integration}}
	}
	var l IntegrationLinkList
	if _, err := c.do(ctx, http.MethodGet, "/integrations/links", q, nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// DeleteIntegrationLink removes one of the caller's links.
func (c *Client) DeleteIntegrationLink(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodDelete, "/integrations/links/"+url.PathEscape(id), nil, nil, nil)
	return err
}
