package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type webhookStore struct{ s *Store }

// Webhooks gives access to the recorded webhook deliveries.
func (s *Store) Webhooks() store.WebhookStore { return webhookStore{s} }

const deliveryCols = `id, integration, delivery_id, event, header, body, status, attempts, error, received_at, updated_at, progress`

func scanDelivery(row pgx.Row) (*store.WebhookDelivery, error) {
	var d store.WebhookDelivery
	var header, progress []byte
	if err := row.Scan(&d.ID, &d.Integration, &d.DeliveryID, &d.Event, &header, &d.Body, &d.Status, &d.Attempts,
		&d.Error, &d.ReceivedAt, &d.UpdatedAt, &progress); err != nil {
		return nil, err
	}
	d.ReceivedAt, d.UpdatedAt = prep.Time(d.ReceivedAt), prep.Time(d.UpdatedAt)
	if len(progress) > 0 {
		d.Progress = progress
	}
	if len(header) > 0 {
		if err := json.Unmarshal(header, &d.Header); err != nil {
			return nil, fmt.Errorf("webhook delivery %s: header: %w", d.ID, err)
		}
	}
	if len(d.Body) == 0 {
		d.Body = nil
	}
	return &d, nil
}

func marshalHeader(h http.Header) ([]byte, error) {
	if len(h) == 0 {
		return nil, nil
	}
	return json.Marshal(h)
}

// Record inserts with ON CONFLICT DO NOTHING: of concurrent inserts of one delivery exactly one affects a row.
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
	body := d.Body
	if body == nil {
		body = []byte{}
	}
	var id string
	err = ws.s.pool.QueryRow(ctx, `INSERT INTO webhook_deliveries (`+deliveryCols+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, 0, '', $8, $8, NULL)
		ON CONFLICT (integration, delivery_id) DO NOTHING RETURNING id`,
		d.ID, d.Integration, d.DeliveryID, d.Event, nullJSON(header), body, d.Status, d.ReceivedAt).Scan(&id)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return false, dbErr("record webhook delivery", err)
	}
	if err := ws.s.pool.QueryRow(ctx, "SELECT id FROM webhook_deliveries WHERE integration = $1 AND delivery_id = $2",
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
	d, err := scanDelivery(ws.s.pool.QueryRow(ctx, "SELECT "+deliveryCols+" FROM webhook_deliveries WHERE id = $1", cid))
	if errors.Is(err, pgx.ErrNoRows) {
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
	d, err := scanDelivery(ws.s.pool.QueryRow(ctx, `UPDATE webhook_deliveries
		SET status = $2, attempts = attempts + 1, updated_at = $3 WHERE id = $1 RETURNING `+deliveryCols,
		cid, store.DeliveryProcessing, prep.Now()))
	if errors.Is(err, pgx.ErrNoRows) {
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
	tag, err := ws.s.pool.Exec(ctx, "UPDATE webhook_deliveries SET status = $2, error = $3, updated_at = $4 WHERE id = $1",
		cid, status, strings.ToValidUTF8(strings.ReplaceAll(errText, "\x00", ""), "\uFFFD"), prep.Now())
	if err != nil {
		return dbErr("finish webhook delivery", err)
	}
	if tag.RowsAffected() == 0 {
		return prep.NotFound("webhook delivery", id)
	}
	return nil
}

func (ws webhookStore) SaveProgress(ctx context.Context, id string, progress []byte) error {
	if err := store.CheckWebhookProgress(progress); err != nil {
		return err
	}
	cid, ok := prep.UUID(id)
	if !ok {
		return prep.NotFound("webhook delivery", id)
	}
	tag, err := ws.s.pool.Exec(ctx, "UPDATE webhook_deliveries SET progress = $2, updated_at = $3 WHERE id = $1",
		cid, progress, prep.Now())
	if err != nil {
		return dbErr("save webhook delivery progress", err)
	}
	if tag.RowsAffected() == 0 {
		return prep.NotFound("webhook delivery", id)
	}
	return nil
}

func (ws webhookStore) ListReceived(ctx context.Context, before time.Time, limit int) ([]*store.WebhookDelivery, error) {
	if limit <= 0 || limit > 500 {
		limit = 500
	}
	rows, err := ws.s.pool.Query(ctx, "SELECT "+deliveryCols+` FROM webhook_deliveries
		WHERE status = $1 AND updated_at < $2 ORDER BY updated_at, id LIMIT $3`, store.DeliveryReceived, prep.Time(before), limit)
	if err != nil {
		return nil, dbErr("list received webhook deliveries", err)
	}
	defer rows.Close()
	var out []*store.WebhookDelivery
	for rows.Next() {
		d, err := scanDelivery(rows)
		if err != nil {
			return nil, dbErr("list received webhook deliveries", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list received webhook deliveries", err)
	}
	return out, nil
}

func (ws webhookStore) Touch(ctx context.Context, id string, before time.Time) (bool, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return false, prep.NotFound("webhook delivery", id)
	}
	tag, err := ws.s.pool.Exec(ctx, "UPDATE webhook_deliveries SET updated_at = $2 WHERE id = $1 AND status = $3 AND updated_at < $4",
		cid, prep.Now(), store.DeliveryReceived, prep.Time(before))
	if err != nil {
		return false, dbErr("touch webhook delivery", err)
	}
	return tag.RowsAffected() == 1, nil
}

type linkStore struct{ s *Store }

// IntegrationLinks gives access to the owners' links of outside sources.
func (s *Store) IntegrationLinks() store.IntegrationLinkStore { return linkStore{s} }

const linkCols = `id, owner_id, integration, source, commands, runs, allow_bots, draft_pr, notify, created_at, pr_command, allowed_commands`

func scanLink(row pgx.Row) (*store.IntegrationLink, error) {
	var l store.IntegrationLink
	var notify, allowed []byte
	if err := row.Scan(&l.ID, &l.OwnerID, &l.Integration, &l.Source, &l.Commands, &l.Runs, &l.AllowBots, &l.DraftPR,
		&notify, &l.CreatedAt, &l.PRCommand, &allowed); err != nil {
		return nil, err
	}
	l.CreatedAt = prep.Time(l.CreatedAt)
	if len(notify) > 0 {
		if err := json.Unmarshal(notify, &l.Notify); err != nil {
			return nil, fmt.Errorf("integration link %s: notify: %w", l.ID, err)
		}
	}
	if len(l.Notify) == 0 {
		l.Notify = nil
	}
	if len(allowed) > 0 {
		if err := json.Unmarshal(allowed, &l.AllowedCommands); err != nil {
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
	_, err := ls.s.pool.Exec(ctx, "INSERT INTO integration_links ("+linkCols+") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
		l.ID, l.OwnerID, l.Integration, l.Source, l.Commands, l.Runs, l.AllowBots, l.DraftPR, nullJSON(notify), l.CreatedAt, l.PRCommand,
		nullJSON(allowedJSON(l.AllowedCommands)))
	if _, dup := uniqueViolation(err); dup {
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
	l, err := scanLink(ls.s.pool.QueryRow(ctx, "SELECT "+linkCols+" FROM integration_links WHERE integration = $1 AND source = $2",
		integration, source))
	if errors.Is(err, pgx.ErrNoRows) {
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
	rows, err := ls.s.pool.Query(ctx, "SELECT "+linkCols+" FROM integration_links"+l.whereSQL()+
		" ORDER BY created_at DESC, id DESC", l.args...)
	if err != nil {
		return nil, dbErr("list integration links", err)
	}
	defer rows.Close()
	out := []*store.IntegrationLink{}
	for rows.Next() {
		x, err := scanLink(rows)
		if err != nil {
			return nil, dbErr("list integration links", err)
		}
		out = append(out, x)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list integration links", err)
	}
	return out, nil
}

func (ls linkStore) Delete(ctx context.Context, ownerID, id string) error {
	cid, ok := prep.UUID(id)
	if !ok || !prep.TextOK(ownerID) {
		return prep.NotFound("integration link", id)
	}
	tag, err := ls.s.pool.Exec(ctx, "DELETE FROM integration_links WHERE id = $1 AND owner_id = $2", cid, ownerID)
	if err != nil {
		return dbErr("delete integration link", err)
	}
	if tag.RowsAffected() == 0 {
		return prep.NotFound("integration link", id)
	}
	return nil
}

// allowedJSON is a link's allowed commands as stored (nil: any command).
func allowedJSON(cmds []string) []byte {
	if len(cmds) == 0 {
		return nil
	}
	b, _ := json.Marshal(cmds)
	return b
}
