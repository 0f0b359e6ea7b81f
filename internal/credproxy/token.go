package credproxy

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// KeyFile is the name, in the data directory, of the worker's proxy key.
const KeyFile = "credproxy-key"

// KeySize is the length of a proxy key in bytes.
const KeySize = 32

const tokenPrefix = "aep1."

// macLabel separates this MAC from any other use of the key.
const macLabel = "aetherium credproxy token v1\x00"

// LoadKey reads the proxy key of a data directory, making it (32 random bytes, mode 0600) if it does not exist.
func LoadKey(dataDir string) ([]byte, error) {
	path := filepath.Join(dataDir, KeyFile)
	b, err := os.ReadFile(path)
	if err == nil {
		if len(b) != KeySize {
			return nil, fmt.Errorf("credential proxy key %s: %d bytes, want %d (remove it to make a new one; "+
				"that revokes every proxy token of this worker)", path, len(b), KeySize)
		}
		return b, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("credential proxy key: %w", err)
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("credential proxy key: %w", err)
	}
	// O_EXCL: two processes starting on one data directory agree on the first key written.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return LoadKey(dataDir)
	}
	if err != nil {
		return nil, fmt.Errorf("credential proxy key: %w", err)
	}
	_, werr := f.Write(key)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("credential proxy key: write %s: %w", path, err)
	}
	return key, nil
}

// Grant is what a token allows, besides the model APIs every token may use.
type Grant struct {
	// VMID is the VM the token belongs to. Required.
	VMID string `json:"vm"`
	// RunID, when set, is the run the usage of this token is attributed to.
	RunID string `json:"run,omitempty"`
	// GitRepos are the repositories the token may fetch through /git/, as "host/path" without ".git"
	// ("github.com/org/repo"). Empty: no git access.
	GitRepos []string `json:"repos,omitempty"`
	// GitPush lets the token push to GitRepos.
	GitPush bool `json:"push,omitempty"`
	// PushRefs, when set, limits GitPush to updating these full ref names ("refs/heads/aetherium/run-1234abcd"):
	// a push naming any other ref, or deleting one of these, is refused whole. Empty: any ref (a push granted
	// explicitly).
	PushRefs []string `json:"push_refs,omitempty"`
	// GitSecret, when set, names the owner's secret the proxy authenticates git requests with, instead of the git
	// host's own (a run's repo.credentials_secret). A name, never a value: the guest may read its token's claims.
	GitSecret string `json:"git_secret,omitempty"`
}

// normalizeRepo is the form repositories are compared in: lower case, no scheme, no ".git", no slashes around.
func normalizeRepo(r string) string {
	r = strings.ToLower(strings.TrimSpace(r))
	r = strings.TrimPrefix(strings.TrimPrefix(r, "https://"), "http://")
	r = strings.Trim(r, "/")
	return strings.TrimSuffix(r, ".git")
}

func (g Grant) allowsRepo(repo string) bool { return slices.Contains(g.GitRepos, normalizeRepo(repo)) }

// signer makes and checks tokens with one key.
type signer struct{ key []byte }

func (s signer) mac(claims string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(macLabel))
	m.Write([]byte(claims))
	return m.Sum(nil)
}

// issue returns the token of g.
func (s signer) issue(g Grant) (string, error) {
	if g.VMID == "" {
		return "", errors.New("credential proxy token: no vm id")
	}
	repos := make([]string, len(g.GitRepos))
	for i, r := range g.GitRepos {
		repos[i] = normalizeRepo(r)
	}
	g.GitRepos = repos
	b, err := json.Marshal(g)
	if err != nil {
		return "", err
	}
	claims := base64.RawURLEncoding.EncodeToString(b)
	return tokenPrefix + claims + "." + base64.RawURLEncoding.EncodeToString(s.mac(claims)), nil
}

var errBadToken = errors.New("not a valid proxy token")

// verify returns the grant of a token whose MAC is right.
func (s signer) verify(tok string) (Grant, error) {
	rest, ok := strings.CutPrefix(tok, tokenPrefix)
	if !ok || len(rest) > 16<<10 {
		return Grant{}, errBadToken
	}
	claims, sig, ok := strings.Cut(rest, ".")
	if !ok {
		return Grant{}, errBadToken
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, s.mac(claims)) {
		return Grant{}, errBadToken
	}
	b, err := base64.RawURLEncoding.DecodeString(claims)
	if err != nil {
		return Grant{}, errBadToken
	}
	var g Grant
	if err := json.Unmarshal(b, &g); err != nil || g.VMID == "" {
		return Grant{}, errBadToken
	}
	return g, nil
}
