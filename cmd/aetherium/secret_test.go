package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/server"
)

// TestRotateKeyCommand runs `aetherium secret rotate-key --new-key-file` on a serve data directory: the secrets
// are then sealed under the new key only, and the command says what to do next.
func TestRotateKeyCommand(t *testing.T) {
	ctx := context.Background()
	dataDir := t.TempDir()
	t.Setenv("AETHERIUM_DATA_DIR", dataDir)
	cfg, err := config.Load(pflag.NewFlagSet("t", pflag.ContinueOnError), os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	st, err := server.OpenStore(ctx, cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m, err := server.OpenSecrets(ctx, cfg, st, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Put(ctx, "owner", "TOKEN", "the-token-value"); err != nil {
		t.Fatal(err)
	}
	newFile := filepath.Join(t.TempDir(), "new-key")
	var out, errb bytes.Buffer
	code := run([]string{"secret", "rotate-key", "--new-key-file", newFile, "--log-level", "warn"}, strings.NewReader(""), &out, &errb)
	if code != 0 || !strings.Contains(out.String(), "re-encrypted 1 secrets") || !strings.Contains(errb.String(), "secrets_key_file="+newFile) {
		t.Fatalf("rotate-key: exit %d\n%s\n%s", code, out.String(), errb.String())
	}
	ids, err := st.Secrets().KeyIDs(ctx)
	if err != nil || len(ids) != 1 || ids[m.Keyring().CurrentID()] != 0 {
		t.Fatalf("key ids after rotation: %v, %v", ids, err)
	}
	// Without a key anywhere, it says so.
	out.Reset()
	errb.Reset()
	t.Setenv("AETHERIUM_DATA_DIR", t.TempDir())
	if code := run([]string{"secret", "rotate-key"}, strings.NewReader(""), &out, &errb); code == 0 || !strings.Contains(errb.String(), "no secrets key is configured") {
		t.Fatalf("rotate-key without a key: exit %d\n%s", code, errb.String())
	}
}
