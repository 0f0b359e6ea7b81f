package server

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// InstallationIDFile is the name, in the data directory, of the file that keeps the installation id.
const InstallationIDFile = "installation-id"

// installationIDRE is what an installation id looks like: short enough for labels, process arguments and file
// names, with no character any of them treats specially.
var installationIDRE = regexp.MustCompile(`^[a-z0-9]{8,32}$`)

// InstallationID returns the id of the installation that owns dataDir, creating it on first use. Every resource a
// backend makes on the host (containers, VMM processes, disks) carries it, and a worker only ever reaps what
// carries its own id: two installations on one host or one Docker engine (two data directories) never touch each
// other's VMs, even with the same worker id.
func InstallationID(dataDir string) (string, error) {
	path := filepath.Join(dataDir, InstallationIDFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(b))
		if !installationIDRE.MatchString(id) {
			return "", fmt.Errorf("installation id in %s is %q, not 8-32 lowercase letters and digits: restore the file or remove it (a new id disowns this data directory's running VMs)", path, id)
		}
		return id, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("read installation id: %w", err)
	}
	var raw [8]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("installation id: %w", err)
	}
	id := hex.EncodeToString(raw[:])
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", fmt.Errorf("create data directory: %w", err)
	}
	// Written to a temporary name and linked into place, so that two processes starting on a new data directory
	// agree on one id and a crash never leaves a half-written file.
	tmp, err := os.CreateTemp(dataDir, ".installation-id-*")
	if err != nil {
		return "", fmt.Errorf("write installation id: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(id + "\n"); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("write installation id: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return InstallationID(dataDir) // another process won the race
		}
		return "", fmt.Errorf("write installation id: %w", err)
	}
	return id, nil
}
