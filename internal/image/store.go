package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// File names inside a template's version directory.
const (
	RootfsFile   = "rootfs.ext4"
	ManifestFile = "manifest.json"
	tmpDir       = ".tmp"
)

// GuestInit is where templates carry the agent, and what the kernel's init= must name.
const GuestInit = "/sbin/aetherium-agent"

// ErrNotFound is returned (wrapped) when a template or version does not exist.
var ErrNotFound = errors.New("template not found")

// namePattern restricts names and versions to what is safe as one path component and readable in a table.
var namePattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$`)

// Boot says how a kernel must start a template's agent; recorded in every manifest so that a template carries its
// own instructions.
type Boot struct {
	Init                 string `json:"init"`
	InitArgs             string `json:"init_args"`
	FirecrackerListenArg string `json:"firecracker_listen_arg"`
	QEMUListenArg        string `json:"qemu_listen_arg"`
}

// DefaultBoot is the boot contract of templates built by this package.
var DefaultBoot = Boot{
	Init:                 GuestInit,
	InitArgs:             "-- --init",
	FirecrackerListenArg: "aetherium.listen=vsock:9999",
	QEMUListenArg:        "aetherium.listen=virtio-serial:agent",
}

// Manifest describes one template version.
type Manifest struct {
	Name         string    `json:"name"`
	Version      string    `json:"version"`
	CreatedAt    time.Time `json:"created_at"`
	Source       string    `json:"source"`    // e.g. "docker:alpine:3.20", "debian:bookworm"
	SourceID     string    `json:"source_id"` // the Docker image ID, or the Debian mirror, suite and Release date
	Size         int64     `json:"size"`      // bytes of rootfs.ext4
	SHA256       string    `json:"sha256"`    // of rootfs.ext4
	Files        int       `json:"files"`     // entries unpacked from the source
	AgentVersion string    `json:"agent_version"`
	AgentSHA256  string    `json:"agent_sha256"`
	InputsHash   string    `json:"inputs_hash"` // hash of everything the image was built from; equal hashes are reused
	Boot         Boot      `json:"boot"`
	Packages     []Package `json:"packages,omitempty"` // Debian templates: every installed package and its version
	// Tools are the tools installed (and verified) at build time: name -> exact version (Debian's version for
	// debian tools). See MissingTools.
	Tools map[string]string `json:"tools,omitempty"`

	// Path is the absolute path of rootfs.ext4; filled in when read, not stored.
	Path string `json:"-"`
}

// Ref is "name@version".
func (m Manifest) Ref() string { return m.Name + "@" + m.Version }

// Store is a directory of templates. It holds no state besides its path, so several processes may share one.
type Store struct {
	dir string
}

// NewStore opens (creating if needed) a template store in dir, normally <data_dir>/images.
func NewStore(dir string) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(abs, tmpDir), 0o755); err != nil {
		return nil, fmt.Errorf("image store: create %s: %w", abs, err)
	}
	return &Store{dir: abs}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// ParseRef splits "name[@version]"; version is "" when absent.
func ParseRef(ref string) (name, version string, err error) {
	name, version, _ = strings.Cut(ref, "@")
	if err := validName("name", name); err != nil {
		return "", "", err
	}
	if strings.Contains(ref, "@") {
		if err := validName("version", version); err != nil {
			return "", "", err
		}
	}
	return name, version, nil
}

func validName(what, s string) error {
	if !namePattern.MatchString(s) || s == "." || s == ".." {
		return fmt.Errorf("invalid template %s %q: use letters, digits, '.', '_' and '-', starting with a letter or digit", what, s)
	}
	return nil
}

// List returns every template version, sorted by name and then newest first.
func (s *Store) List() ([]Manifest, error) {
	names, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("image store: list: %w", err)
	}
	var out []Manifest
	for _, n := range names {
		if !n.IsDir() || n.Name() == tmpDir {
			continue
		}
		ms, err := s.versions(n.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, ms...)
	}
	return out, nil
}

// versions returns the complete versions of name, newest first. Directories without a readable manifest are not
// templates (a rename is the only way one appears, so this is a foreign or damaged directory) and are skipped.
func (s *Store) versions(name string) ([]Manifest, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("image store: list %s: %w", name, err)
	}
	var out []Manifest
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		m, err := s.read(name, e.Name())
		if err != nil {
			continue
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.After(out[j].CreatedAt)
		}
		return out[i].Version > out[j].Version
	})
	return out, nil
}

func (s *Store) read(name, version string) (Manifest, error) {
	dir := filepath.Join(s.dir, name, version)
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if errors.Is(err, os.ErrNotExist) {
		return Manifest{}, fmt.Errorf("image store: %s@%s: %w", name, version, ErrNotFound)
	} else if err != nil {
		return Manifest{}, fmt.Errorf("image store: read manifest of %s@%s: %w", name, version, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Manifest{}, fmt.Errorf("image store: decode manifest of %s@%s: %w", name, version, err)
	}
	m.Path = filepath.Join(dir, RootfsFile)
	return m, nil
}

// Get returns the template named by ref ("name@version", or "name" for its newest version).
func (s *Store) Get(ref string) (Manifest, error) {
	name, version, err := ParseRef(ref)
	if err != nil {
		return Manifest{}, err
	}
	if version != "" {
		return s.read(name, version)
	}
	ms, err := s.versions(name)
	if err != nil {
		return Manifest{}, err
	}
	if len(ms) == 0 {
		return Manifest{}, fmt.Errorf("image store: %s: %w", name, ErrNotFound)
	}
	return ms[0], nil
}

// Remove deletes one version ("name@version" is required, so that a typo cannot remove every version). The
// directory is first renamed into .tmp so that readers never see a half-deleted template.
func (s *Store) Remove(ref string) error {
	name, version, err := ParseRef(ref)
	if err != nil {
		return err
	}
	if version == "" {
		return fmt.Errorf("image store: remove %s: give a version (name@version)", name)
	}
	if _, err := s.read(name, version); err != nil {
		return err
	}
	trash, err := os.MkdirTemp(filepath.Join(s.dir, tmpDir), "rm-")
	if err != nil {
		return fmt.Errorf("image store: remove %s: %w", ref, err)
	}
	defer os.RemoveAll(trash)
	if err := os.Rename(filepath.Join(s.dir, name, version), filepath.Join(trash, "v")); err != nil {
		return fmt.Errorf("image store: remove %s: %w", ref, err)
	}
	// Drop the name's directory once its last version is gone; fails harmlessly when others remain.
	_ = os.Remove(filepath.Join(s.dir, name))
	return nil
}
