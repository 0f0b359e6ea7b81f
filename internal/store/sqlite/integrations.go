package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type webhookStore struct{ s *Store }

// Webhooks gives access to the recorded webhook deliveries.
func (s *Store) Webhooks() store.WebhookStore { return webhookStore{s} }

const deliveryCols = `id, integration, delivery_id, event, header, body, status, attempts, error, received_at, updated_at, progress`

func scanDelivery(row scanner) (*store.WebhookDelivery, error) {
	var d store.WebhookDelivery
	var header, progress sql.NullString
	var received, updated string
	if err := row.Scan(&d.ID, &d.Integration, &d.DeliveryID, &d.Event, &header, &d.Body, &d.Status, &d.Attempts,
		&d.Error, &received, &updated, &progress); err != nil {
		return nil, err
	}
	var err error
	if d.ReceivedAt, err = parseTS(received); err != nil {
		return nil, err
	}
	if d.UpdatedAt, err = parseTS(updated); err != nil {
		return nil, err
	}
	if b := docBytes(header); b != nil {
		if err := json.Unmarshal(b, &d.Header); err != nil {
			return nil, fmt.Errorf("webhook delivery %s: header: %w", d.ID, err)
		}
	}
	if len(d.Body) == 0 {
		d.Body = nil
	}
	d.Progress = docBytes(progress)
	return &d, nil
}

func marshalHeader(h http.Header) ([]byte, error) {
	if len(h) == 0 {
		return nil, nil
	}
	return json.Marshal(h)
}

// Record is one INSERT ... ON CONFLICT DO NOTHING on the single writer, so of concurrent Records one inserts.
func (ws webhookStore) Record(ctx context.Context, d *store.WebhookDelivery) (bool, error) {
	if err := store.CheckWebhookDelivery(d); err != nil {
		return false, err
	}
	header, err := marshalHeader(d.Header)
	if err != nil {
		return false, prep.Invalid("webhook delivery header: %v", err)
	}
	d.ID = uuid.NewString()
	d.ReceivedAt = prep.Time(d.ReceivedAt)
	d.UpdatedAt, d.Status, d.Attempts, d.Error = d.ReceivedAt, store.DeliveryReceived, 0, ""
	res, err := ws.s.exec(ctx, `INSERT INTO webhook_deliveries (`+deliveryCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, 0, '', ?, ?, NULL) ON CONFLICT (integration, delivery_id) DO NOTHING`,
		d.ID, d.Integration, d.DeliveryID, d.Event, nullText(header), blob(string(d.Body)), d.Status,
		ts(d.ReceivedAt), ts(d.ReceivedAt))
	if err != nil {
		return false, dbErr("record webhook delivery", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return false, dbErr("record webhook delivery", err)
	} else if n == 1 {
		return true, nil
	}
	// Read on the writer: the row that won may not be visible to a reader's snapshot yet.
	var id string
	if err := ws.s.w.QueryRowContext(ctx, "SELECT id FROM webhook_deliveries WHERE integration = ? AND delivery_id = ?",
		d.Integration, d.DeliveryID).Scan(&id); err != nil {
		return false, dbErr("record webhook delivery", err)
	}
	d.ID = id
	return false, nil
}

func (ws webhookStore) Get(ctx context.Context, id string) (*store.WebhookDelivery, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("webhook delivery", id)
	}
	d, err := scanDelivery(ws.s.row(ctx, "SELECT "+deliveryCols+" FROM webhook_deliveries WHERE id = ?", cid))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, prep.NotFound("webhook delivery", id)
	}
	if err != nil {
		return nil, dbErr("get webhook delivery", err)
	}
	return d, nil
}

func (ws webhookStore) Attempt(ctx context.Context, id string) (*store.WebhookDelivery, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("webhook delivery", id)
	}
	d, err := scanDelivery(ws.s.w.QueryRowContext(ctx, `UPDATE webhook_deliveries
		SET status = ?, attempts = attempts + 1, updated_at = ? WHERE id = ? RETURNING `+deliveryCols,
		store.DeliveryProcessing, ts(prep.Now()), cid))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, prep.NotFound("webhook delivery", id)
	}
	if err != nil {
		return nil, dbErr("attempt webhook delivery", err)
	}
	return d, nil
}

func (ws webhookStore) Finish(ctx context.Context, id, status, errText string) error {
	if status != store.DeliveryDone && status != store.DeliveryFailed {
		return prep.Invalid("webhook delivery: final status %q is not done or failed", status)
	}
	cid, ok := prep.UUID(id)
	if !ok {
		return prep.NotFound("webhook delivery", id)
	}
	return exec1(ctx, ws.s, "finish webhook delivery", "webhook delivery", id,
		"UPDATE webhook_deliveries SET status = ?, error = ?, updated_at = ? WHERE id = ?",
		status, strings.ToValidUTF8(strings.ReplaceAll(errText, "\x00", ""), "\uFFFD"), ts(prep.Now()), cid)
}

func (ws webhookStore) SaveProgress(ctx context.Context, id string, progress []byte) error {
	if err := store.CheckWebhookProgress(progress); err != nil {
		return err
	}
	cid, ok := prep.UUID(id)
	if !ok {
		return prep.NotFound("webhook delivery", id)
	}
	return exec1(ctx, ws.s, "save webhook delivery progress", "webhook delivery", id,
		"UPDATE webhook_deliveries SET progress = ?, updated_at = ? WHERE id = ?", string(progress), ts(prep.Now()), cid)
}

func (ws webhookStore) ListReceived(ctx context.Context, before time.Time, limit int) ([]*store.WebhookDelivery, error) {
	if limit <= 0 || limit > 500 {
		limit = 500
	}
	return collect(ctx, ws.s.r, "list received webhook deliveries", "SELECT "+deliveryCols+
		" FROM webhook_deliveries WHERE status = ? AND updated_at < ? ORDER BY updated_at, id LIMIT ?",
		[]any{store.DeliveryReceived, ts(prep.Time(before)), limit}, scanDelivery)
}

func (ws webhookStore) Touch(ctx context.Context, id string, before time.Time) (bool, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return false, prep.NotFound("webhook delivery", id)
	}
	res, err := ws.s.exec(ctx, "UPDATE webhook_deliveries SET updated_at = ? WHERE id = ? AND status = ? AND updated_at < ?",
		ts(prep.Now()), cid, store.DeliveryReceived, ts(prep.Time(before)))
	if err != nil {
		return false, dbErr("touch webhook delivery", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, dbErr("touch webhook delivery", err)
	}
	return n == 1, nil
}

type linkStore struct{ s *Store }

// IntegrationLinks gives access to the owners' links of outside sources.
func (s *Store) IntegrationLinks() store.IntegrationLinkStore { return linkStore{s} }

const linkCols = `id, owner_id, integration, source, commands, runs, allow_bots, draft_pr, notify, created_at, pr_command, allowed_commands`

func scanLink(row scanner) (*store.IntegrationLink, error) {
	var l store.IntegrationLink
	var notify, allowed sql.NullString
	var created string
	if err := row.Scan(&l.ID, &l.OwnerID, &l.Integration, &l.Source, &l.Commands, &l.Runs, &l.AllowBots, &l.DraftPR,
		&notify, &created, &l.PRCommand, &allowed); err != nil {
		return nil, err
	}
	var err error
	if l.CreatedAt, err = parseTS(created); err != nil {
		return nil, err
	}
	if b := docBytes(notify); b != nil {
		if err := json.Unmarshal(b, &l.Notify); err != nil {
			return nil, fmt.Errorf("integration link %s: notify: %w", l.ID, err)
		}
	}
	if len(l.Notify) == 0 {
		l.Notify = nil
	}
	if b := docBytes(allowed); b != nil {
		if err := json.Unmarshal(b, &l.AllowedCommands); err != nil {
			return nil, fmt.Errorf("integration link %s: allowed commands: %w", l.ID, err)
		}
	}
	return &l, nil
}

func (ls linkStore) Create(ctx context.Context, l *store.IntegrationLink) error {
	if err := store.CheckIntegrationLink(l); err != nil {
		return err
	}
	if l.ID == "" {
		l.ID = uuid.NewString()
	} else if id, ok := prep.UUID(l.ID); ok {
		l.ID = id
	} else {
		return prep.Invalid("integration link id %q is not a uuid", l.ID)
	}
	if l.CreatedAt.IsZero() {
		l.CreatedAt = time.Now()
	}
	l.CreatedAt = prep.Time(l.CreatedAt)
	if len(l.Notify) == 0 {
		l.Notify = nil
	}
	var notify []byte
	if l.Notify != nil {
		notify, _ = json.Marshal(l.Notify)
	}
	_, err := ls.s.exec(ctx, "INSERT INTO integration_links ("+linkCols+") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		l.ID, l.OwnerID, l.Integration, l.Source, l.Commands, l.Runs, l.AllowBots, l.DraftPR, nullText(notify), ts(l.CreatedAt), l.PRCommand,
		nullText(allowedJSON(l.AllowedCommands)))
	if _, _, dup := uniqueViolation(err); dup {
		return fmt.Errorf("%s source %q is already linked: %w", l.Integration, l.Source, model.ErrConflict)
	}
	if err != nil {
		return dbErr("create integration link", err)
	}
	return nil
}

func (ls linkStore) Find(ctx context.Context, integration, source string) (*store.IntegrationLink, error) {
	if !prep.TextOK(integration, source) {
		return nil, prep.NotFound("integration link", source)
	}
	l, err := scanLink(ls.s.row(ctx, "SELECT "+linkCols+" FROM integration_links WHERE integration = ? AND source = ?",
		integration, source))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, prep.NotFound("integration link", source)
	}
	if err != nil {
		return nil, dbErr("find integration link", err)
	}
	return l, nil
}

func (ls linkStore) List(ctx context.Context, ownerID, integration string) ([]*store.IntegrationLink, error) {
	if !prep.TextOK(ownerID, integration) {
		return []*store.IntegrationLink{}, nil
	}
	var l list
	if ownerID != "" {
		l.and("owner_id = " + l.arg(ownerID))
	}
	if integration != "" {
		l.and("integration = " + l.arg(integration))
	}
	return collect(ctx, ls.s.r, "list integration links", "SELECT "+linkCols+" FROM integration_links"+l.whereSQL()+
		" ORDER BY created_at DESC, id DESC", l.args, scanLink)
}

func (ls linkStore) Delete(ctx context.Context, ownerID, id string) error {
	cid, ok := prep.UUID(id)
	if !ok || !prep.TextOK(ownerID) {
		return prep.NotFound("integration link", id)
	}
	return exec1(ctx, ls.s, "delete integration link", "integration link", id,
		"DELETE FROM integration_links WHERE id = ? AND owner_id = ?", cid, ownerID)
}

// allowedJSON is a link's allowed commands as stored (nil: any command).
func allowedJSON(cmds []string) []byte {
	if len(cmds) == 0 {
		return nil
	}
	b, _ := json.Marshal(cmds)
	return b
}
