package image

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
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
	v   versionedDir[Manifest]
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
	return &Store{dir: abs, v: versionedDir[Manifest]{
		dir: abs, label: "image store", payload: RootfsFile,
		setPath: func(m *Manifest, p string) { m.Path = p },
		before:  func(a, b Manifest) bool { return a.CreatedAt.After(b.CreatedAt) },
		version: func(m Manifest) string { return m.Version },
	}}, nil
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
func (s *Store) List() ([]Manifest, error) { return s.v.list() }

// versions returns the complete versions of name, newest first.
func (s *Store) versions(name string) ([]Manifest, error) { return s.v.versions(name) }

func (s *Store) read(name, version string) (Manifest, error) { return s.v.read(name, version) }

// Get returns the template named by ref ("name@version", or "name" for its newest version).
func (s *Store) Get(ref string) (Manifest, error) { return s.v.get(ref) }

// Remove deletes one version ("name@version" is required, so that a typo cannot remove every version). The
// directory is first renamed into .tmp so that readers never see a half-deleted template.
func (s *Store) Remove(ref string) error { return s.v.remove(ref) }
