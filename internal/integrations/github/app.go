package github

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ParsePrivateKey reads the App's PEM private key (PKCS#1, as GitHub issues it, or PKCS#8).
func ParsePrivateKey(pemBytes []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("github app private key: no PEM block")
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("github app private key: %w", err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, errors.New("github app private key: not an RSA key")
	}
	return rk, nil
}

// appJWT is the App's JSON Web Token (RS256): issued 60 s in the past against clock drift, expiring 9 minutes
// ahead (GitHub refuses more than 10).
func appJWT(key *rsa.PrivateKey, issuer string, now time.Time) (string, error) {
	enc := base64.RawURLEncoding
	header := enc.EncodeToString([]byte(`{"alg":"RS256","typ":"JWT"}`))
	claims, err := json.Marshal(map[string]any{
		"iat": now.Add(-60 * time.Second).Unix(), "exp": now.Add(9 * time.Minute).Unix(), "iss": issuer,
	})
	if err != nil {
		return "", err
	}
	signing := header + "." + enc.EncodeToString(claims)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", fmt.Errorf("sign github app jwt: %w", err)
	}
	return signing + "." + enc.EncodeToString(sig), nil
}

// tokenRefreshBefore: a cached installation token is replaced this long before it expires, so no request goes
// out with a token that expires on the way.
const tokenRefreshBefore = 5 * time.Minute

type cachedToken struct {
	token   string
	expires time.Time
}

// tokens caches installation tokens per (installation, repository).
type tokens struct {
	mu sync.Mutex
	m  map[string]cachedToken
}

// installationToken returns a token of installation narrowed to repo (a name without owner), from the cache while
// it has more than tokenRefreshBefore left.
func (g *GitHub) installationToken(ctx context.Context, installation int64, repo string) (string, error) {
	key := strconv.FormatInt(installation, 10) + "/" + repo
	now := g.now()
	g.tok.mu.Lock()
	if t, ok := g.tok.m[key]; ok && now.Add(tokenRefreshBefore).Before(t.expires) {
		g.tok.mu.Unlock()
		return t.token, nil
	}
	g.tok.mu.Unlock()
	if g.key == nil {
		return "", errors.New("github: no app private key is configured (github_private_key_file)")
	}
	jwt, err := appJWT(g.key, g.issuer(), now)
	if err != nil {
		return "", err
	}
	var out struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	body := map[string]any{"repositories": []string{repo}}
	if err := g.call(ctx, "Bearer "+jwt, http.MethodPost,
		fmt.Sprintf("/app/installations/%d/access_tokens", installation), body, &out); err != nil {
		return "", fmt.Errorf("installation token: %w", err)
	}
	if out.Token == "" {
		return "", errors.New("installation token: the answer has no token")
	}
	g.tok.mu.Lock()
	g.tok.m[key] = cachedToken{token: out.Token, expires: out.ExpiresAt}
	g.tok.mu.Unlock()
	return out.Token, nil
}

// APIError is a GitHub answer that is not 2xx.
type APIError struct {
	Method, Path string
	Status       int
	Message      string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("github %s %s: %d %s", e.Method, e.Path, e.Status, e.Message)
}

// call sends one REST request. auth is the Authorization header ("Bearer <jwt>" or "token <installation token>");
// it is never logged.
func (g *GitHub) call(ctx context.Context, auth, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(g.apiURL, "/")+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("X-GitHub-Api-Version", "2022-11-28")
	req.Header.Set("User-Agent", "aetherium")
	req.Header.Set("Authorization", auth)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := g.http.Do(req)
	if err != nil {
		return fmt.Errorf("github %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("github %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var m struct {
			Message string `json:"message"`
		}
		_ = json.Unmarshal(b, &m)
		return &APIError{Method: method, Path: path, Status: resp.StatusCode, Message: m.Message}
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("github %s %s: decode: %w", method, path, err)
		}
	}
	return nil
}
