package secrets_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/sqlite"
)

func mustKey(t *testing.T) secrets.Key {
	t.Helper()
	k, err := secrets.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func ring(t *testing.T, cur secrets.Key, older ...secrets.Key) *secrets.Keyring {
	t.Helper()
	kr, err := secrets.NewKeyring(cur, older...)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func openStore(t *testing.T) store.Store {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestParseKey(t *testing.T) {
	k := mustKey(t)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawURLEncoding} {
		raw, _ := base64.StdEncoding.DecodeString(k.Encode())
		got, err := secrets.ParseKey("  " + enc.EncodeToString(raw) + "\n")
		if err != nil || got.ID() != k.ID() {
			t.Fatalf("ParseKey = %v, %v; want key %s", got.ID(), err, k.ID())
		}
	}
	short := base64.StdEncoding.EncodeToString([]byte("sixteen byte key"))
	for _, bad := range []string{"", "not base64 at all!", short} {
		_, err := secrets.ParseKey(bad)
		if err == nil {
			t.Fatalf("ParseKey(%q) succeeded", bad)
		}
		if bad != "" && strings.Contains(err.Error(), bad) {
			t.Fatalf("error quotes the value: %v", err)
		}
	}
	if len(k.ID()) != 16 || k.ID() == mustKey(t).ID() {
		t.Fatalf("key ids: %q", k.ID())
	}
}

func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "secrets-key")
	k, created, err := secrets.LoadOrCreateKeyFile(path)
	if err != nil || !created {
		t.Fatalf("first LoadOrCreateKeyFile = %v, %v", created, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, %v; want 0600", fi.Mode(), err)
	}
	k2, created, err := secrets.LoadOrCreateKeyFile(path)
	if err != nil || created || k2.ID() != k.ID() {
		t.Fatalf("second LoadOrCreateKeyFile = %s, %v, %v; want the same key", k2.ID(), created, err)
	}
	if err := secrets.WriteKeyFile(path, mustKey(t)); err == nil {
		t.Fatal("WriteKeyFile replaced an existing key file")
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.ReadKeyFile(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable key file was read: %v", err)
	}
}

func TestSealOpen(t *testing.T) {
	a, b := mustKey(t), mustKey(t)
	kr := ring(t, a)
	id, nonce, ct, err := kr.Seal("owner", "NAME", []byte("s3cret-value"))
	if err != nil || id != a.ID() || len(nonce) != 12 {
		t.Fatalf("Seal = %s, %d-byte nonce, %v", id, len(nonce), err)
	}
	if bytes.Contains(ct, []byte("s3cret")) {
		t.Fatal("ciphertext contains the value")
	}
	if pt, err := kr.Open(id, "owner", "NAME", nonce, ct); err != nil || string(pt) != "s3cret-value" {
		t.Fatalf("Open = %q, %v", pt, err)
	}
	_, nonce2, _, _ := kr.Seal("owner", "NAME", []byte("s3cret-value"))
	if bytes.Equal(nonce, nonce2) {
		t.Fatal("two seals share a nonce")
	}
	// Moved to another owner or name, or opened with another key: no.
	for _, c := range []struct{ owner, name string }{{"other", "NAME"}, {"owner", "NAME2"}, {"owne", "rNAME"}} {
		if _, err := kr.Open(id, c.owner, c.name, nonce, ct); !errors.Is(err, secrets.ErrOpen) {
			t.Fatalf("Open as %s/%s = %v; want ErrOpen", c.owner, c.name, err)
		}
	}
	if _, err := ring(t, b).Open(id, "owner", "NAME", nonce, ct); !errors.Is(err, secrets.ErrUnknownKey) {
		t.Fatalf("Open with another key = %v; want ErrUnknownKey", err)
	}
	ct[0] ^= 1
	if _, err := kr.Open(id, "owner", "NAME", nonce, ct); !errors.Is(err, secrets.ErrOpen) {
		t.Fatalf("Open of an altered ciphertext = %v", err)
	}
}

const value = "ghp_Zx81-fake-token-value"

func TestScrubber(t *testing.T) {
	s := secrets.NewScrubber(value, "abc", "")
	cases := map[string]string{
		"token=" + value + "\n":            "token=***\n",
		value + value:                      "******",
		"abc stays (too short)":            "abc stays (too short)",
		"nothing here":                     "nothing here",
		strings.Repeat("x", 3) + value[:5]: strings.Repeat("x", 3) + value[:5],
	}
	for in, want := range cases {
		if got := s.String(in); got != want {
			t.Errorf("String(%q) = %q, want %q", in, got, want)
		}
	}
	// base64 of any text holding the value, at each alignment, in both alphabets, padded or not: at most a
	// character or two of the encoding survives on each side, never a run that decodes to part of the value.
	for _, prefix := range []string{"", "a", "ab", "abc"} {
		for _, suffix := range []string{"", "\n", "xy"} {
			plain := []byte(prefix + value + suffix)
			for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding} {
				e := enc.EncodeToString(plain)
				got := s.String(e)
				if !strings.Contains(got, secrets.Mask) {
					t.Errorf("base64 %q of %q not scrubbed: %q", e, plain, got)
				}
				rest := strings.ReplaceAll(got, secrets.Mask, " ")
				if len(rest) > len(prefix)/3*4+4+8 {
					t.Errorf("too much of %q survives: %q", e, got)
				}
			}
		}
	}
}

func TestStreamStraddlesWrites(t *testing.T) {
	s := secrets.NewScrubber(value, "other-secret")
	in := "before " + value + " middle " + base64.StdEncoding.EncodeToString([]byte(value+"\n")) + " other-secret end"
	want := s.String(in)
	if strings.Contains(want, value) || strings.Contains(want, "other-secret") {
		t.Fatalf("whole scrub left a value: %q", want)
	}
	for cut1 := 0; cut1 <= len(in); cut1++ {
		for _, step := range []int{1, 3, 7, len(in)} {
			st := s.Stream()
			var out bytes.Buffer
			out.Write(st.Write([]byte(in[:cut1])))
			for i := cut1; i < len(in); i += step {
				out.Write(st.Write([]byte(in[i:min(i+step, len(in))])))
			}
			out.Write(st.Flush())
			if out.String() != want {
				t.Fatalf("cut %d step %d: got %q, want %q", cut1, step, out.String(), want)
			}
		}
	}
}

func TestMaskEnv(t *testing.T) {
	env := map[string]string{"GITHUB_TOKEN": "t", "api_key": "k", "DB_PASSWORD": "p", "AWS_SECRET_ACCESS_KEY": "s",
		"GH_PAT": "x", "HOME": "/root", "PATH": "/bin", "LANG": "C", "PWD": "/tmp"}
	got := secrets.MaskEnv(env)
	for k, v := range got {
		masked := v == secrets.Mask
		if masked != map[string]bool{"GITHUB_TOKEN": true, "api_key": true, "DB_PASSWORD": true,
			"AWS_SECRET_ACCESS_KEY": true, "GH_PAT": true}[k] {
			t.Errorf("%s = %q", k, v)
		}
	}
	if env["GITHUB_TOKEN"] != "t" {
		t.Fatal("MaskEnv changed its argument")
	}
}

func TestManagerVerifyAndRotate(t *testing.T) {
	st, ctx := openStore(t), t.Context()
	oldKey, newKey := mustKey(t), mustKey(t)
	m := secrets.NewManager(st.Secrets(), ring(t, oldKey), nil)
	if err := m.Verify(ctx); err != nil {
		t.Fatalf("Verify of a fresh database: %v", err)
	}
	for _, name := range []string{"A", "B", "C"} {
		if _, _, err := m.Put(ctx, "owner-1", name, value+name); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := m.Put(ctx, "owner-1", "EMPTY", ""); !errors.Is(err, model.ErrInvalidInput) {
		t.Fatalf("Put of an empty value = %v", err)
	}
	if _, _, err := m.Put(ctx, "owner-1", "9BAD", "x"); !errors.Is(err, model.ErrInvalidInput) {
		t.Fatalf("Put of a bad name = %v", err)
	}

	// The wrong key fails, with a message naming both keys.
	wrong := secrets.NewManager(st.Secrets(), ring(t, newKey), nil)
	err := wrong.Verify(ctx)
	if !errors.Is(err, secrets.ErrWrongKey) || !strings.Contains(err.Error(), oldKey.ID()) || !strings.Contains(err.Error(), newKey.ID()) {
		t.Fatalf("Verify with the wrong key = %v", err)
	}
	// Also when no secret is stored any more: the key check tells.
	empty := openStore(t)
	if err := secrets.NewManager(empty.Secrets(), ring(t, oldKey), nil).Verify(ctx); err != nil {
		t.Fatal(err)
	}
	if err := secrets.NewManager(empty.Secrets(), ring(t, newKey), nil).Verify(ctx); !errors.Is(err, secrets.ErrWrongKey) {
		t.Fatalf("Verify of a used database without secrets with another key = %v", err)
	}

	// Rotation: new current key, old one still readable.
	rot := secrets.NewManager(st.Secrets(), ring(t, newKey, oldKey), nil)
	if err := rot.Verify(ctx); err != nil {
		t.Fatalf("Verify during rotation: %v", err)
	}
	if v, err := rot.Secret(ctx, "owner-1", "A"); err != nil || v != value+"A" {
		t.Fatalf("Secret during rotation = %q, %v", v, err)
	}
	n, err := rot.Rotate(ctx)
	if err != nil || n != 3 {
		t.Fatalf("Rotate = %d, %v; want 3", n, err)
	}
	ids, _ := st.Secrets().KeyIDs(ctx)
	if len(ids) != 1 || ids[newKey.ID()] != 3 {
		t.Fatalf("after rotation: %v", ids)
	}
	if n, err := rot.Rotate(ctx); err != nil || n != 0 {
		t.Fatalf("second Rotate = %d, %v", n, err)
	}
	only := secrets.NewManager(st.Secrets(), ring(t, newKey), nil)
	if err := only.Verify(ctx); err != nil {
		t.Fatalf("Verify with the new key alone: %v", err)
	}
	for _, name := range []string{"A", "B", "C"} {
		if v, err := only.Secret(ctx, "owner-1", name); err != nil || v != value+name {
			t.Fatalf("Secret %s after rotation = %q, %v", name, v, err)
		}
	}
	if err := secrets.NewManager(st.Secrets(), ring(t, oldKey), nil).Verify(ctx); !errors.Is(err, secrets.ErrWrongKey) {
		t.Fatalf("Verify with the retired key = %v", err)
	}
}

func TestResolve(t *testing.T) {
	st, ctx := openStore(t), t.Context()
	m := secrets.NewManager(st.Secrets(), ring(t, mustKey(t)), nil)
	if _, _, err := m.Put(ctx, "o", "GH", value); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Put(ctx, "o", "UNUSED", "unused-secret-value"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Put(ctx, "p", "GH", "other-owners-value"); err != nil {
		t.Fatal(err)
	}
	res, err := m.Resolve(ctx, "o", map[string]string{"GITHUB_TOKEN": "GH"}, "plain-credential")
	if err != nil || res.Env["GITHUB_TOKEN"] != value || len(res.Env) != 1 {
		t.Fatalf("Resolve = %+v, %v", res, err)
	}
	got := res.Scrubber.String(value + " unused-secret-value plain-credential other-owners-value")
	if got != "*** *** *** other-owners-value" {
		t.Fatalf("scrubbed: %q", got)
	}
	x, _ := st.Secrets().Get(ctx, "o", "GH")
	if x.LastUsedAt == nil {
		t.Fatal("Resolve did not record the use")
	}
	if u, _ := st.Secrets().Get(ctx, "o", "UNUSED"); u.LastUsedAt != nil {
		t.Fatal("a secret only scrubbed was marked used")
	}
	_, err = m.Resolve(ctx, "o", map[string]string{"A": "GH", "B": "NOPE"})
	var me *secrets.MissingError
	if !errors.As(err, &me) || me.Name != "NOPE" || me.Var != "B" || !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("Resolve of a missing secret = %v", err)
	}
	if err := m.Missing(ctx, "o", map[string]string{"X": "GH", "Y": "NOPE"}); !errors.As(err, &me) || me.Name != "NOPE" {
		t.Fatalf("Missing = %v", err)
	}
	if err := m.Missing(ctx, "p", map[string]string{"X": "GH"}); err != nil {
		t.Fatalf("Missing = %v", err)
	}
}

// TestScrubberEchoBase64 is `echo $SECRET | base64` and `printf %s $SECRET | base64`: nothing of the encoding is
// left but the padding.
func TestScrubberEchoBase64(t *testing.T) {
	for _, v := range []string{value, value + "x", value + "xy"} {
		s := secrets.NewScrubber(v)
		for _, text := range []string{v + "\n", v} {
			enc := base64.StdEncoding.EncodeToString([]byte(text))
			if got := strings.TrimRight(s.String(enc+"\n"), "=\n"); got != secrets.Mask {
				t.Errorf("base64 of %q = %q, scrubbed %q", text, enc, got)
			}
		}
	}
}

// TestVerifyRefusesASecondKey: a database used with one key refuses a server with another one even before any
// secret is stored (a gateway and a worker given different keys), and two servers starting at once with different
// keys never both pass, nor leave the database unusable.
func TestVerifyRefusesASecondKey(t *testing.T) {
	ctx := t.Context()
	for i := range 10 {
		st := openStore(t)
		a := secrets.NewManager(st.Secrets(), ring(t, mustKey(t)), nil)
		b := secrets.NewManager(st.Secrets(), ring(t, mustKey(t)), nil)
		errs := make(chan error, 2)
		go func() { errs <- a.Verify(ctx) }()
		go func() { errs <- b.Verify(ctx) }()
		e1, e2 := <-errs, <-errs
		if e1 == nil && e2 == nil {
			t.Fatalf("round %d: two different keys both passed", i)
		}
		for _, err := range []error{e1, e2} {
			if err != nil && !errors.Is(err, secrets.ErrWrongKey) {
				t.Fatalf("round %d: %v", i, err)
			}
		}
		// Whatever happened, one of them can start now, and then the other cannot.
		first, second := a, b
		if err := first.Verify(ctx); err != nil {
			first, second = b, a
			if err := first.Verify(ctx); err != nil {
				t.Fatalf("round %d: neither key can start after the race: %v", i, err)
			}
		}
		if err := second.Verify(ctx); !errors.Is(err, secrets.ErrWrongKey) {
			t.Fatalf("round %d: the second key passed: %v", i, err)
		}
		if checks, _ := st.Secrets().Checks(ctx); len(checks) != 1 {
			t.Fatalf("round %d: %d key checks left", i, len(checks))
		}
	}
}

// TestStreamHoldsBackOnlyWhatMayBeAValue: output that cannot begin a value passes at once; only a possible
// beginning is held.
func TestStreamHoldsBackOnlyWhatMayBeAValue(t *testing.T) {
	s := secrets.NewScrubber(value).Stream()
	if got := string(s.Write([]byte("compiling...\nok\n"))); got != "compiling...\nok\n" {
		t.Fatalf("ordinary output held back: %q", got)
	}
	if got := string(s.Write([]byte("token: " + value[:6]))); got != "token: " {
		t.Fatalf("a possible beginning of the value passed: %q", got)
	}
	if got := string(s.Write([]byte("-not-it\n"))); got != value[:6]+"-not-it\n" {
		t.Fatalf("after it turned out not to be the value: %q", got)
	}
	if got := string(s.Write([]byte(value[:3]))); got != "" {
		t.Fatalf("held: %q", got)
	}
	if got := string(s.Write([]byte(value[3:]))); got != secrets.Mask {
		t.Fatalf("the value split in two: %q", got)
	}
	if got := s.Flush(); len(got) != 0 {
		t.Fatalf("left over: %q", got)
	}
}

// BenchmarkStreamScrub scrubs command output (text, 32 KiB writes) with 20 secrets of the owner's.
func BenchmarkStreamScrub(b *testing.B) {
	var values []string
	for i := range 20 {
		values = append(values, fmt.Sprintf("secret-value-%02d-%s", i, strings.Repeat("x", 24)))
	}
	s := secrets.NewScrubber(values...)
	chunk := []byte(strings.Repeat("go: downloading github.com/example/module v1.2.3\nok  \tpkg/path\t0.123s\n", 32<<10/70))
	b.SetBytes(int64(len(chunk)))
	st := s.Stream()
	for b.Loop() {
		st.Write(chunk)
	}
}
