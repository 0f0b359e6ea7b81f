package tools

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Errors of requests and resolution, returned wrapped with the tool's name and what is available: callers map
// them to "bad request" answers with errors.Is.
var (
	// ErrUnknownTool: the catalog has no tool of that name.
	ErrUnknownTool = errors.New("unknown tool")
	// ErrUnknownVersion: the tool has no version matching the request (or its kind cannot choose one).
	ErrUnknownVersion = errors.New("unknown tool version")
	// ErrConflict: one tool was asked for in two versions that cannot both hold.
	ErrConflict = errors.New("conflicting tool versions")
	// ErrInvalidRequest: a request is malformed ("node@", a version with spaces).
	ErrInvalidRequest = errors.New("invalid tool request")
	// ErrInvalidCatalog: a catalog file does not parse or contradicts itself.
	ErrInvalidCatalog = errors.New("invalid tool catalog")
)

// Kind says where a tool comes from and how it is installed.
type Kind string

// Kinds of tools.
const (
	KindDebian  Kind = "debian"  // packages of the target's Debian suite, installed with dpkg
	KindNPM     Kind = "npm"     // one package of an npm registry, unpacked under ToolsRoot
	KindTarball Kind = "tarball" // an archive or a single file from a URL, unpacked under ToolsRoot
)

// Formats of tarball tools.
const (
	FormatTar  = "tar"  // a tar archive, compressed or not (the target's tar detects gzip, xz, bzip2)
	FormatFile = "file" // a single file (a static binary), installed as the first bin's path
)

// Tool is one catalog entry.
type Tool struct {
	Name        string `yaml:"-" json:"name"`
	Description string `yaml:"description" json:"description"`
	Kind        Kind   `yaml:"kind" json:"kind"`
	// Default is the version spec of a request that names none (npm, tarball).
	Default string `yaml:"default" json:"default,omitempty"`
	// Aliases are version specs that stand for others, e.g. lts: "24".
	Aliases map[string]string `yaml:"aliases" json:"aliases,omitempty"`
	// Requires names tools that must be present first (any version); missing ones are installed along.
	Requires []string `yaml:"requires" json:"requires,omitempty"`
	// Bins maps each command the tool provides to its file: an absolute path (debian) or a path inside the
	// unpacked package (npm, tarball), which is linked into /usr/local/bin.
	Bins map[string]string `yaml:"bins" json:"bins"`
	// Verify is the command (looked up in PATH) that must succeed once the tool is installed.
	Verify []string `yaml:"verify" json:"verify"`

	// Packages are the Debian packages of a debian tool; the first one's version is the tool's.
	Packages []string `yaml:"packages" json:"packages,omitempty"`
	// Package is the npm package of an npm tool.
	Package string `yaml:"package" json:"package,omitempty"`
	// URL is the download address of a tarball tool; "{version}" is replaced by the exact version.
	URL string `yaml:"url" json:"url,omitempty"`
	// Versions maps each version of a tarball tool to the sha256 (hex) of its download.
	Versions map[string]string `yaml:"versions" json:"versions,omitempty"`
	// Format of a tarball tool's download: FormatTar (default) or FormatFile.
	Format string `yaml:"format" json:"format,omitempty"`
	// StripComponents drops the archive's single top directory (1) or nothing (0).
	StripComponents int `yaml:"strip_components" json:"strip_components,omitempty"`
}

// Catalog is a set of tools by name. It is read-only once loaded and safe to share.
type Catalog struct {
	tools map[string]*Tool
}

//go:embed catalog.yaml
var builtin []byte

// Default returns the built-in catalog (a new copy each call).
func Default() *Catalog {
	c, err := Load(bytes.NewReader(builtin))
	if err != nil {
		// The embedded file is checked by the tests; a broken one is a build mistake, not a runtime condition,
		// but it still must not panic a server: it gets an empty catalog whose every lookup fails loudly.
		return &Catalog{tools: map[string]*Tool{}}
	}
	return c
}

// LoadFile reads a catalog from a YAML file (the format of the built-in catalog.yaml).
func LoadFile(p string) (*Catalog, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("tool catalog: %w", err)
	}
	defer f.Close()
	c, err := Load(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return c, nil
}

var (
	// toolNamePattern keeps names safe as path components and readable in requests ("name@version").
	toolNamePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	// versionPattern admits semver, Debian-free specs and dist-tags, and nothing a shell or a path could misread.
	versionPattern = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$`)
	binNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)
	sha256Pattern  = regexp.MustCompile(`^[0-9a-f]{64}$`)
	// debPackagePattern is Debian Policy 5.6.1.
	debPackagePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	// npmNamePattern is npm's rule for new package names, scoped or not.
	npmNamePattern = regexp.MustCompile(`^(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*$`)
)

// Load parses and checks a catalog.
func Load(r io.Reader) (*Catalog, error) {
	var doc struct {
		Tools map[string]*Tool `yaml:"tools"`
	}
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidCatalog, err)
	}
	if len(doc.Tools) == 0 {
		return nil, fmt.Errorf("%w: no tools (want a top-level \"tools:\" map)", ErrInvalidCatalog)
	}
	c := &Catalog{tools: doc.Tools}
	var errs []error
	for name, t := range doc.Tools {
		if t == nil {
			errs = append(errs, fmt.Errorf("tool %q: empty entry", name))
			continue
		}
		t.Name = name
		if err := c.check(t); err != nil {
			errs = append(errs, fmt.Errorf("tool %q: %w", name, err))
		}
	}
	if len(errs) == 0 {
		if err := c.checkCycles(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
		return nil, fmt.Errorf("%w: %w", ErrInvalidCatalog, errors.Join(errs...))
	}
	return c, nil
}

func (c *Catalog) check(t *Tool) error {
	if !toolNamePattern.MatchString(t.Name) {
		return errors.New("invalid name: use lower case letters, digits, '.', '_' and '-'")
	}
	switch t.Kind {
	case KindDebian, KindNPM, KindTarball:
	default:
		return fmt.Errorf("unknown kind %q (want %s, %s or %s)", t.Kind, KindDebian, KindNPM, KindTarball)
	}
	if len(t.Bins) == 0 {
		return errors.New("no bins")
	}
	if len(t.Verify) == 0 || t.Verify[0] == "" {
		return errors.New("no verify command")
	}
	for _, r := range t.Requires {
		if _, ok := c.tools[r]; !ok {
			return fmt.Errorf("requires unknown tool %q", r)
		}
		if r == t.Name {
			return errors.New("requires itself")
		}
	}
	for alias, v := range t.Aliases {
		if !versionPattern.MatchString(alias) || !versionPattern.MatchString(v) {
			return fmt.Errorf("invalid alias %q: %q", alias, v)
		}
		if _, chained := t.Aliases[v]; chained {
			return fmt.Errorf("alias %q names another alias %q", alias, v)
		}
	}
	for bin, p := range t.Bins {
		if !binNamePattern.MatchString(bin) {
			return fmt.Errorf("invalid bin name %q", bin)
		}
		if t.Kind == KindDebian {
			if !path.IsAbs(p) || path.Clean(p) != p {
				return fmt.Errorf("bin %q: a debian tool's bin is an absolute clean path, not %q", bin, p)
			}
		} else if !relPath(p) {
			return fmt.Errorf("bin %q: %q is not a clean relative path inside the package", bin, p)
		}
	}
	switch t.Kind {
	case KindDebian:
		if len(t.Packages) == 0 {
			return errors.New("a debian tool needs packages")
		}
		for _, p := range t.Packages {
			if !debPackagePattern.MatchString(p) {
				return fmt.Errorf("invalid Debian package name %q", p)
			}
		}
		if t.Default != "" || len(t.Aliases) > 0 || t.Package != "" || t.URL != "" || len(t.Versions) > 0 {
			return errors.New("a debian tool takes packages only (its version is the suite's)")
		}
	case KindNPM:
		if !npmNamePattern.MatchString(t.Package) {
			return fmt.Errorf("invalid npm package %q", t.Package)
		}
		if !versionPattern.MatchString(t.Default) {
			return errors.New("an npm tool needs a default version spec (e.g. latest)")
		}
		if len(t.Packages) > 0 || t.URL != "" || len(t.Versions) > 0 {
			return errors.New("an npm tool takes package only")
		}
	case KindTarball:
		if !strings.Contains(t.URL, "://") {
			return fmt.Errorf("invalid url %q", t.URL)
		}
		if len(t.Versions) == 0 {
			return errors.New("a tarball tool needs versions (version: sha256)")
		}
		for v, sum := range t.Versions {
			if !versionPattern.MatchString(v) {
				return fmt.Errorf("invalid version %q", v)
			}
			if !sha256Pattern.MatchString(sum) {
				return fmt.Errorf("version %s: %q is not a sha256 in lower-case hex", v, sum)
			}
		}
		if !versionPattern.MatchString(t.Default) {
			return errors.New("a tarball tool needs a default version spec")
		}
		switch t.Format {
		case "", FormatTar:
		case FormatFile:
			if len(t.Bins) != 1 {
				return errors.New("a single-file tool has exactly one bin")
			}
		default:
			return fmt.Errorf("unknown format %q (want %s or %s)", t.Format, FormatTar, FormatFile)
		}
		if t.StripComponents != 0 && t.StripComponents != 1 {
			return errors.New("strip_components is 0 or 1")
		}
		if len(t.Packages) > 0 || t.Package != "" {
			return errors.New("a tarball tool takes url and versions only")
		}
	default:
		return fmt.Errorf("unknown kind %q (want %s, %s or %s)", t.Kind, KindDebian, KindNPM, KindTarball)
	}
	return nil
}

func relPath(p string) bool {
	return p != "" && !path.IsAbs(p) && path.Clean(p) == p && p != ".." && !strings.HasPrefix(p, "../")
}

func (c *Catalog) checkCycles() error {
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string, trail []string) error
	visit = func(n string, trail []string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("requires form a cycle: %s", strings.Join(append(trail, n), " -> "))
		case 2:
			return nil
		}
		state[n] = 1
		for _, r := range c.tools[n].Requires {
			if err := visit(r, append(trail, n)); err != nil {
				return err
			}
		}
		state[n] = 2
		return nil
	}
	for _, n := range c.Names() {
		if err := visit(n, nil); err != nil {
			return err
		}
	}
	return nil
}

// Names lists the tools, sorted.
func (c *Catalog) Names() []string {
	out := make([]string, 0, len(c.tools))
	for n := range c.tools {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Tool returns a copy of the named tool, or ErrUnknownTool (wrapped, listing the catalog).
func (c *Catalog) Tool(name string) (Tool, error) {
	t, err := c.lookup(name)
	if err != nil {
		return Tool{}, err
	}
	return *t, nil
}

func (c *Catalog) lookup(name string) (*Tool, error) {
	t, ok := c.tools[name]
	if !ok {
		return nil, fmt.Errorf("%w %q: available tools are %s", ErrUnknownTool, name, strings.Join(c.Names(), ", "))
	}
	return t, nil
}

// Tools returns copies of every tool, sorted by name (for listings).
func (c *Catalog) Tools() []Tool {
	out := make([]Tool, 0, len(c.tools))
	for _, n := range c.Names() {
		out = append(out, *c.tools[n])
	}
	return out
}

// Request is one tool asked for. Version is a spec (exact, a prefix such as "24", a dist-tag or an alias); empty
// means the tool's default.
type Request struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
}

func (r Request) String() string {
	if r.Version == "" {
		return r.Name
	}
	return r.Name + "@" + r.Version
}

// Parse turns a request's "tools" list ("name" or "name@version") and "tool_versions" map (name -> version) into
// requests, in the list's order with tools named only in the map after them (sorted). A tool named twice must ask
// for compatible versions: equal ones, or one a prefix of the other ("22" and "22.12.0" give "22.12.0"); aliases
// are expanded first. Unknown tools are ErrUnknownTool, incompatible versions ErrConflict, malformed entries
// ErrInvalidRequest; a debian tool given a version is ErrUnknownVersion. All errors are collected.
func (c *Catalog) Parse(list []string, versions map[string]string) ([]Request, error) {
	var out []Request
	index := map[string]int{}
	var errs []error
	add := func(name, version, from string) {
		t, err := c.lookup(name)
		if err != nil {
			errs = append(errs, err)
			return
		}
		if version != "" {
			if !versionPattern.MatchString(version) {
				errs = append(errs, fmt.Errorf("%w: %s: version %q: use letters, digits, '.', '+', '_' and '-'", ErrInvalidRequest, from, version))
				return
			}
			if t.Kind == KindDebian {
				errs = append(errs, fmt.Errorf("%w: %s: %s comes from the template's Debian suite, whose version cannot be chosen; ask for %q without a version", ErrUnknownVersion, from, name, name))
				return
			}
			if a, ok := t.Aliases[version]; ok {
				version = a
			}
		}
		i, seen := index[name]
		if !seen {
			index[name] = len(out)
			out = append(out, Request{Name: name, Version: version})
			return
		}
		merged, ok := mergeSpecs(out[i].Version, version)
		if !ok {
			errs = append(errs, fmt.Errorf("%w: %s is asked for as %q and as %q", ErrConflict, name, out[i].Version, version))
			return
		}
		out[i].Version = merged
	}
	for _, s := range list {
		s = strings.TrimSpace(s)
		name, version, hasAt := strings.Cut(s, "@")
		if name == "" || (hasAt && version == "") {
			errs = append(errs, fmt.Errorf("%w: %q: want \"name\" or \"name@version\"", ErrInvalidRequest, s))
			continue
		}
		add(name, version, fmt.Sprintf("%q", s))
	}
	names := make([]string, 0, len(versions))
	for n := range versions {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		v := strings.TrimSpace(versions[n])
		if v == "" {
			errs = append(errs, fmt.Errorf("%w: tool_versions[%q] is empty", ErrInvalidRequest, n))
			continue
		}
		add(n, v, fmt.Sprintf("tool_versions[%q]", n))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// mergeSpecs combines two version specs of one tool: "" takes the other, a numeric prefix takes the longer.
func mergeSpecs(a, b string) (string, bool) {
	switch {
	case a == b || b == "":
		return a, true
	case a == "":
		return b, true
	case specMatches(b, a):
		return b, true
	case specMatches(a, b):
		return a, true
	}
	return "", false
}

// Missing returns the requests that have does not satisfy, in order. have maps tool names to installed exact
// versions (a template manifest's Tools). A request without a version, or with a dist-tag such as "latest"
// (which only a registry can tell), is satisfied by any installed version; otherwise the installed version must
// match the spec (equal, or the spec a prefix such as "24" of "24.21.0"). Unknown tools are returned as missing,
// so that installing them reports the error.
func (c *Catalog) Missing(have map[string]string, reqs []Request) []Request {
	var out []Request
	for _, r := range reqs {
		v, ok := have[r.Name]
		if !ok {
			out = append(out, r)
			continue
		}
		spec := r.Version
		if t, err := c.lookup(r.Name); err == nil {
			if a, ok := t.Aliases[spec]; ok {
				spec = a
			}
		}
		if spec == "" || !numericSpec(spec) || specMatches(v, spec) {
			continue
		}
		out = append(out, r)
	}
	return out
}

// ordered returns names and everything they require, each after what it requires, without duplicates.
func (c *Catalog) ordered(names []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	var visit func(n string) error
	visit = func(n string) error {
		if seen[n] {
			return nil
		}
		seen[n] = true
		t, err := c.lookup(n)
		if err != nil {
			return err
		}
		for _, r := range t.Requires {
			if err := visit(r); err != nil {
				return err
			}
		}
		out = append(out, n)
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// sortedKeys is the map's keys in order, for messages.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
