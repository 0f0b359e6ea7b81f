//go:build linux

package tools

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Defaults of Config.
const (
	DefaultNPMRegistry  = "https://registry.npmjs.org"
	DefaultDebianMirror = "http://deb.debian.org/debian"
	DefaultAptMaxAge    = 6 * time.Hour
)

// Where tools live inside a target.
const (
	// ToolsRoot holds npm and tarball tools, one directory per tool and version, and StateFile.
	ToolsRoot = "/opt/aetherium/tools"
	// BinDir receives a symbolic link per command of npm and tarball tools.
	BinDir = "/usr/local/bin"
	// StateFile records the tools installed in the target (name -> exact version), as JSON.
	StateFile = ToolsRoot + "/tools.json"
	// targetPath is the PATH of every command the installer runs.
	targetPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Config configures an Installer.
type Config struct {
	// Catalog of tools; nil means Default().
	Catalog *Catalog
	// CacheDir holds downloads (by checksum), npm package data and apt lists. Required.
	CacheDir string
	// NPMRegistry is the registry of npm tools; default DefaultNPMRegistry.
	NPMRegistry string
	// DebianMirror is where the host fetches Debian packages for running VMs; default DefaultDebianMirror.
	DebianMirror string
	// AptMaxAge is how old the host's copy of a suite's package lists may get before it is refreshed; default
	// DefaultAptMaxAge.
	AptMaxAge time.Duration
	// HTTPClient for registries and downloads; nil means one without a total timeout (downloads are large;
	// contexts bound them).
	HTTPClient *http.Client
	Logger     *slog.Logger
}

// Installer resolves tool requests, fetches what they need on the host (through a cache) and installs them into
// targets. It is safe for concurrent use on different targets.
type Installer struct {
	catalog     *Catalog
	cache       *cache
	apt         *aptHost
	npmRegistry string
	client      *http.Client
	log         *slog.Logger
}

// NewInstaller checks cfg and creates the cache directory.
func NewInstaller(cfg Config) (*Installer, error) {
	if cfg.CacheDir == "" {
		return nil, errors.New("tool installer: no cache directory configured")
	}
	dir, err := filepath.Abs(cfg.CacheDir)
	if err != nil {
		return nil, fmt.Errorf("tool installer: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("tool installer: create cache %s: %w", dir, err)
	}
	if cfg.Catalog == nil {
		cfg.Catalog = Default()
	}
	if cfg.NPMRegistry == "" {
		cfg.NPMRegistry = DefaultNPMRegistry
	}
	if cfg.DebianMirror == "" {
		cfg.DebianMirror = DefaultDebianMirror
	}
	for _, u := range []string{cfg.NPMRegistry, cfg.DebianMirror} {
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return nil, fmt.Errorf("tool installer: %q is not an http(s) URL", u)
		}
	}
	if cfg.AptMaxAge <= 0 {
		cfg.AptMaxAge = DefaultAptMaxAge
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Transport: http.DefaultTransport}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Installer{
		catalog:     cfg.Catalog,
		cache:       &cache{dir: dir, client: cfg.HTTPClient},
		apt:         &aptHost{dir: filepath.Join(dir, "apt"), mirror: strings.TrimRight(cfg.DebianMirror, "/"), maxAge: cfg.AptMaxAge},
		npmRegistry: strings.TrimRight(cfg.NPMRegistry, "/"),
		client:      cfg.HTTPClient,
		log:         cfg.Logger,
	}, nil
}

// Catalog is the installer's catalog.
func (in *Installer) Catalog() *Catalog { return in.catalog }

// Resolved is a request made exact: the version and the file (with its checksum) to install.
type Resolved struct {
	Name    string `json:"name"`
	Kind    Kind   `json:"kind"`
	Version string `json:"version,omitempty"` // exact; empty for debian tools (the target's suite decides)
	// Spec is the version asked for, after the default and aliases were applied ("24", "latest").
	Spec     string   `json:"spec,omitempty"`
	URL      string   `json:"url,omitempty"`
	Checksum Checksum `json:"checksum,omitzero"`
	Packages []string `json:"packages,omitempty"` // debian tools
	// Implicit marks a tool that another one requires and nobody asked for: it is skipped when the target has
	// it (in any version, or its commands on PATH).
	Implicit bool `json:"implicit,omitempty"`
}

// Key is one line that identifies what installing r puts into a target: templates hash it, so that a changed
// resolution (a new release under "24") builds a new template and an unchanged one reuses the old.
func (r Resolved) Key() string {
	switch r.Kind {
	case KindDebian:
		return fmt.Sprintf("tool %s debian %s", r.Name, strings.Join(r.Packages, ","))
	}
	return fmt.Sprintf("tool %s %s %s %s %s", r.Name, r.Kind, r.Version, r.Checksum, r.URL)
}

func (r Resolved) String() string {
	if r.Version == "" {
		return r.Name
	}
	return r.Name + " " + r.Version
}

// Resolve makes requests exact, adding the tools they require (Implicit, at their defaults) before them. npm
// tools ask the registry (or its data saved in the cache when it is unreachable). Every failure is reported.
func (in *Installer) Resolve(ctx context.Context, reqs []Request, progress func(string)) ([]Resolved, error) {
	progress = orDiscard(progress)
	asked := map[string]string{}
	var names []string
	for _, r := range reqs {
		if _, dup := asked[r.Name]; dup {
			return nil, fmt.Errorf("%w: %s is requested twice (use Catalog.Parse to merge requests)", ErrConflict, r.Name)
		}
		asked[r.Name] = r.Version
		names = append(names, r.Name)
	}
	order, err := in.catalog.ordered(names)
	if err != nil {
		return nil, err
	}
	if len(order) > 0 {
		progress("resolving " + strings.Join(order, ", "))
	}
	var out []Resolved
	var errs []error
	for _, n := range order {
		t := in.catalog.tools[n]
		spec, explicit := asked[n]
		r, err := in.resolveOne(ctx, t, spec, progress)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r.Implicit = !explicit
		out = append(out, r)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func (in *Installer) resolveOne(ctx context.Context, t *Tool, spec string, progress func(string)) (Resolved, error) {
	if t.Kind == KindDebian {
		if spec != "" {
			return Resolved{}, fmt.Errorf("%w: %s comes from the template's Debian suite, whose version cannot be chosen (asked for %q)", ErrUnknownVersion, t.Name, spec)
		}
		return Resolved{Name: t.Name, Kind: t.Kind, Packages: append([]string(nil), t.Packages...)}, nil
	}
	if spec == "" {
		spec = t.Default
	}
	if a, ok := t.Aliases[spec]; ok {
		spec = a
	}
	if !versionPattern.MatchString(spec) {
		return Resolved{}, fmt.Errorf("%w: %s: version %q: use letters, digits, '.', '+', '_' and '-'", ErrInvalidRequest, t.Name, spec)
	}
	var r Resolved
	var err error
	switch t.Kind {
	case KindNPM:
		r, err = in.resolveNPM(ctx, t, spec, progress)
	case KindTarball:
		r, err = resolveTarball(t, spec)
	default:
		err = fmt.Errorf("tool %s: unknown kind %q", t.Name, t.Kind)
	}
	if err != nil {
		return Resolved{}, err
	}
	r.Spec = spec
	return r, nil
}

// resolveTarball picks among the catalog's versions: exact, "latest" (the newest) or a numeric prefix.
func resolveTarball(t *Tool, spec string) (Resolved, error) {
	versions := sortedKeys(t.Versions)
	v := ""
	switch {
	case t.Versions[spec] != "":
		v = spec
	case spec == "latest":
		v = newestFirst(versions, 1)[0]
	case numericSpec(spec):
		v = pickVersion(versions, spec)
	}
	if v == "" {
		sortVersionsDesc(versions)
		return Resolved{}, fmt.Errorf("%w: %s has no version %q; available: %s", ErrUnknownVersion, t.Name, spec, strings.Join(versions, ", "))
	}
	return Resolved{Name: t.Name, Kind: t.Kind, Version: v, URL: strings.ReplaceAll(t.URL, "{version}", v),
		Checksum: Checksum{Algo: "sha256", Hex: t.Versions[v]}}, nil
}

// Installed reports one tool of an install.
type Installed struct {
	Name    string `json:"name"`
	Kind    Kind   `json:"kind"`
	Version string `json:"version"`
	// Verified is the first line the verify command printed (e.g. "v24.21.0").
	Verified string `json:"verified,omitempty"`
	// AlreadyPresent: the target had it; nothing was installed.
	AlreadyPresent bool `json:"already_present,omitempty"`
	// Downloaded: something was fetched from the network rather than the host's cache.
	Downloaded bool          `json:"downloaded,omitempty"`
	Duration   time.Duration `json:"duration"`
}

// Install resolves reqs and installs them into t; see InstallResolved.
func (in *Installer) Install(ctx context.Context, t Target, reqs []Request, progress func(string)) ([]Installed, error) {
	rs, err := in.Resolve(ctx, reqs, progress)
	if err != nil {
		return nil, err
	}
	return in.InstallResolved(ctx, t, rs, progress)
}

// InstallResolved installs rs into t, each tool completely or not at all: fetched on the host (cache first,
// checksum checked), copied into the target, unpacked into a temporary directory that is renamed into place,
// linked into BinDir and verified with its verify command; a tool that fails verification is removed again (and
// the links it replaced restored). Debian tools are installed together with dpkg from package files the host
// downloads for the target's suite, so that the target needs no network. Tools already installed at the same
// version are not installed again. It stops at the first failure and returns what it installed until then.
// progress (nil: none) receives one line per step.
func (in *Installer) InstallResolved(ctx context.Context, t Target, rs []Resolved, progress func(string)) ([]Installed, error) {
	progress = orDiscard(progress)
	state, err := readState(ctx, t)
	if err != nil {
		return nil, err
	}
	var out []Installed
	var debs []Resolved
	var others []Resolved
	for _, r := range rs {
		tool, err := in.catalog.lookup(r.Name)
		if err != nil {
			return nil, err
		}
		if r.Implicit {
			if ok, v := in.present(ctx, t, tool, state); ok {
				progress(fmt.Sprintf("%s is present (required by another tool)", r.Name))
				out = append(out, Installed{Name: r.Name, Kind: r.Kind, Version: v, AlreadyPresent: true})
				continue
			}
		}
		if r.Kind == KindDebian {
			debs = append(debs, r)
		} else {
			others = append(others, r)
		}
	}
	if len(debs) > 0 {
		done, err := in.installDebian(ctx, t, debs, state, progress)
		out = append(out, done...)
		if err != nil {
			return out, err
		}
	}
	for _, r := range others {
		done, err := in.installUnpacked(ctx, t, r, state, progress)
		if err != nil {
			return out, err
		}
		out = append(out, done)
	}
	return out, nil
}

// Inventory returns the tools recorded as installed in t (name -> exact version).
func (in *Installer) Inventory(ctx context.Context, t Target) (map[string]string, error) {
	return readState(ctx, t)
}

// present says whether a required tool is in t: recorded there, or all its commands found.
func (in *Installer) present(ctx context.Context, t Target, tool *Tool, state map[string]string) (bool, string) {
	if v, ok := state[tool.Name]; ok {
		return true, v
	}
	for bin := range tool.Bins {
		res, err := t.Run(ctx, []string{"sh", "-c", `command -v "$1"`, "sh", bin}, baseEnv())
		if err != nil || res.ExitCode != 0 {
			return false, ""
		}
	}
	return true, "unknown"
}

// unpackScript unpacks the archive uploaded to $tmp/archive (or places a single file) into $tmp/x, checks the
// bins, and renames the result to $vdir; an existing $vdir is moved to $tmp/old for a rollback.
const unpackScript = `set -eu
tmp=$1 fmt=$2 strip=$3 vdir=$4 z=$5
shift 5
cd "$tmp"
mkdir x
if [ "$fmt" = file ]; then
	mkdir -p "x/$(dirname "$1")"
	mv archive "x/$1"
else
	if ! tar -x${z}of archive -C x; then
		echo "cannot unpack the archive: the target's tar -x${z} failed (compressed archives need its gzip, xz or bzip2 support)" >&2
		exit 1
	fi
	rm -f archive
fi
src=x
if [ "$strip" = 1 ]; then
	n=0
	top=
	for e in x/* x/.[!.]* x/..?*; do
		if [ -e "$e" ] || [ -L "$e" ]; then n=$((n+1)); top=$e; fi
	done
	if [ "$n" != 1 ] || [ -L "$top" ] || [ ! -d "$top" ]; then
		echo "the archive does not hold a single top directory to strip" >&2
		exit 1
	fi
	src=$top
fi
for b in "$@"; do
	if [ ! -f "$src/$b" ]; then echo "the package has no file $b" >&2; exit 1; fi
done
chmod -R u+w,a+rX "$src"
for b in "$@"; do chmod a+rx "$src/$b"; done
mkdir -p "${vdir%/*}"
if [ -e "$vdir" ] || [ -L "$vdir" ]; then mv "$vdir" "$tmp/old"; fi
mv "$src" "$vdir"
`

// linkScript points each link at its target, printing "prev<TAB>link<TAB>what it was" first ("" for nothing,
// "-" for a file that is moved into $tmp for a rollback).
const linkScript = `set -eu
tmp=$1
shift
i=0
while [ $# -gt 1 ]; do
	link=$1 target=$2
	shift 2
	i=$((i+1))
	mkdir -p "${link%/*}"
	prev=
	if [ -L "$link" ]; then
		prev=$(readlink "$link")
	elif [ -e "$link" ]; then
		prev=-
		mv "$link" "$tmp/prev-$i"
	fi
	printf 'prev\t%s\t%s\n' "$link" "$prev"
	ln -sfn "$target" "$link"
done
`

// rollbackScript undoes unpackScript and linkScript: links back as they were, the new version directory gone and
// the one it replaced back.
const rollbackScript = `tmp=$1 vdir=$2
shift 2
i=0
while [ $# -gt 1 ]; do
	link=$1 prev=$2
	shift 2
	i=$((i+1))
	case "$prev" in
	"") rm -f "$link" ;;
	-) rm -f "$link"; mv "$tmp/prev-$i" "$link" ;;
	*) ln -sfn "$prev" "$link" ;;
	esac
done
rm -rf "$vdir"
if [ -e "$tmp/old" ] || [ -L "$tmp/old" ]; then mv "$tmp/old" "$vdir"; fi
`

// installUnpacked installs one npm or tarball tool.
func (in *Installer) installUnpacked(ctx context.Context, t Target, r Resolved, state map[string]string, progress func(string)) (Installed, error) {
	start := time.Now()
	tool, err := in.catalog.lookup(r.Name)
	if err != nil {
		return Installed{}, err
	}
	done := Installed{Name: r.Name, Kind: r.Kind, Version: r.Version}
	vdir := path.Join(ToolsRoot, r.Name, r.Version)
	links := in.links(tool, r)
	if state[r.Name] == r.Version {
		if ok, err := t.Exists(ctx, vdir); err != nil {
			return done, err
		} else if ok {
			// Make sure the commands point here (another version may have been linked since), but install
			// nothing.
			tmp := path.Join(ToolsRoot, ".tmp", r.Name+"-"+randHex())
			defer in.cleanup(t, tmp)
			if _, err := in.runScript(ctx, t, "link "+r.String(), linkScript, append([]string{tmp}, links...)...); err != nil {
				return done, err
			}
			progress(fmt.Sprintf("%s is installed already", r))
			done.AlreadyPresent = true
			done.Duration = time.Since(start)
			return done, nil
		}
	}

	f, err := in.cache.fetch(ctx, r.URL, r.Checksum, r.String(), progress)
	if err != nil {
		return done, fmt.Errorf("install %s: %w", r, err)
	}
	done.Downloaded = f.Downloaded
	progress(fmt.Sprintf("installing %s (%s) into %s", r, megabytes(f.Size), t))
	tmp := path.Join(ToolsRoot, ".tmp", r.Name+"-"+randHex())
	defer in.cleanup(t, tmp)
	file, err := os.Open(f.Path)
	if err != nil {
		return done, fmt.Errorf("install %s: %w", r, err)
	}
	err = t.WriteFile(ctx, path.Join(tmp, "archive"), file, 0o600)
	file.Close()
	if err != nil {
		return done, fmt.Errorf("install %s: copy into %s: %w", r, t, err)
	}
	format, strip := tool.Format, tool.StripComponents
	if r.Kind == KindNPM {
		format, strip = FormatTar, 1 // npm tarballs hold one top directory, normally "package"
	}
	if format == "" {
		format = FormatTar
	}
	z := ""
	if format == FormatTar {
		// Busybox's tar does not detect compression by itself; GNU tar and busybox both take these flags.
		if z, err = compressionFlag(f.Path); err != nil {
			return done, fmt.Errorf("install %s: %w", r, err)
		}
	}
	args := []string{tmp, format, fmt.Sprint(strip), vdir, z}
	for _, b := range sortedKeys(tool.Bins) {
		args = append(args, tool.Bins[b])
	}
	if _, err := in.runScript(ctx, t, "unpack "+r.String(), unpackScript, args...); err != nil {
		return done, err
	}
	out, err := in.runScript(ctx, t, "link "+r.String(), linkScript, append([]string{tmp}, links...)...)
	if err != nil {
		in.rollback(t, tmp, vdir, out)
		return done, err
	}
	verified, err := in.verify(ctx, t, tool, r.String())
	if err != nil {
		in.rollback(t, tmp, vdir, out)
		return done, err
	}
	done.Verified = verified
	state[r.Name] = r.Version
	if err := writeState(ctx, t, state); err != nil {
		in.rollback(t, tmp, vdir, out)
		return done, err
	}
	done.Duration = time.Since(start)
	progress(fmt.Sprintf("verified %s: %s", r.Name, verified))
	return done, nil
}

// compressionFlag is tar's flag for the compression of the archive at p, from its first bytes.
func compressionFlag(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 6)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return "z", nil
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return "J", nil
	case bytes.HasPrefix(head, []byte("BZh")):
		return "j", nil
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "", errors.New("zstd-compressed archives are not supported (busybox's tar cannot unpack them): use gzip or xz")
	}
	return "", nil // plain tar; a wrong guess shows as tar's own error
}

// links lists (link, target) pairs: each command in BinDir, and the tool's "current" link to the version.
func (in *Installer) links(tool *Tool, r Resolved) []string {
	vdir := path.Join(ToolsRoot, r.Name, r.Version)
	var out []string
	for _, b := range sortedKeys(tool.Bins) {
		out = append(out, path.Join(BinDir, b), path.Join(vdir, tool.Bins[b]))
	}
	return append(out, path.Join(ToolsRoot, r.Name, "current"), r.Version)
}

// rollback undoes a tool's unpack and links, from the "prev" lines linkScript printed.
func (in *Installer) rollback(t Target, tmp, vdir string, linkOut []byte) {
	args := []string{tmp, vdir}
	for line := range strings.SplitSeq(string(linkOut), "\n") {
		f := strings.Split(line, "\t")
		if len(f) == 3 && f[0] == "prev" {
			args = append(args, f[1], f[2])
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := in.runScript(ctx, t, "roll back", rollbackScript, args...); err != nil {
		in.log.Error("tool install: roll back", "target", t.String(), "dir", vdir, "err", err)
	}
}

// cleanup removes a temporary directory in the target, even when the install's context has ended.
func (in *Installer) cleanup(t Target, tmp string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := t.Run(ctx, []string{"sh", "-c", `rm -rf "$1"; rmdir "${1%/*}" 2>/dev/null; true`, "sh", tmp}, baseEnv())
	if err != nil || res.ExitCode != 0 {
		in.log.Warn("tool install: remove temporary directory", "target", t.String(), "dir", tmp, "err", err)
	}
}

// runScript runs a shell script with args in t; a non-zero exit is an error with the script's output.
func (in *Installer) runScript(ctx context.Context, t Target, what, script string, args ...string) ([]byte, error) {
	res, err := t.Run(ctx, append([]string{"sh", "-c", script, "sh"}, args...), baseEnv())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if res.ExitCode != 0 {
		return res.Output, fmt.Errorf("%s in %s failed (exit %d): %s", what, t, res.ExitCode, strings.TrimSpace(tail(res.Output, 15)))
	}
	return res.Output, nil
}

// verify runs the tool's verify command and returns the first line it printed.
func (in *Installer) verify(ctx context.Context, t Target, tool *Tool, what string) (string, error) {
	res, err := t.Run(ctx, tool.Verify, baseEnv())
	if err != nil {
		return "", fmt.Errorf("verify %s: %w", what, err)
	}
	if res.ExitCode != 0 {
		hint := ""
		if res.ExitCode == 132 || strings.Contains(string(res.Output), "Illegal instruction") {
			hint = " (SIGILL: the binary needs CPU features the VM's CPU model lacks, e.g. SSE4.2 or AVX)"
		}
		return "", fmt.Errorf("verify %s: %s exited %d in %s%s: %s", what, strings.Join(tool.Verify, " "), res.ExitCode, t, hint,
			strings.TrimSpace(tail(res.Output, 10)))
	}
	line := ""
	for l := range strings.SplitSeq(string(res.Output), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			line = l
			break
		}
	}
	if len(line) > 200 {
		line = line[:200]
	}
	return line, nil
}

// installDebian installs debian tools together: the host plans and downloads the package files the target
// lacks, the target installs them with dpkg.
func (in *Installer) installDebian(ctx context.Context, t Target, rs []Resolved, state map[string]string, progress func(string)) ([]Installed, error) {
	start := time.Now()
	status, err := t.ReadFile(ctx, "/var/lib/dpkg/status", 256<<20)
	if errors.Is(err, fs.ErrNotExist) {
		names := make([]string, len(rs))
		for i, r := range rs {
			names[i] = r.Name
		}
		return nil, fmt.Errorf("%s has no dpkg database: the Debian tools %s need a Debian-based template "+
			"(npm and tarball tools install anywhere)", t, strings.Join(names, ", "))
	} else if err != nil {
		return nil, err
	}
	have := dpkgInstalled(status)
	var missing []string
	seen := map[string]bool{}
	for _, r := range rs {
		for _, p := range r.Packages {
			if _, ok := have[p]; !ok && !seen[p] {
				seen[p] = true
				missing = append(missing, p)
			}
		}
	}
	downloaded := false
	if len(missing) > 0 {
		if downloaded, err = in.dpkgInstall(ctx, t, status, have, missing, progress); err != nil {
			return nil, err
		}
		if status, err = t.ReadFile(ctx, "/var/lib/dpkg/status", 256<<20); err != nil {
			return nil, err
		}
		have = dpkgInstalled(status)
	}
	var out []Installed
	for _, r := range rs {
		tool, _ := in.catalog.lookup(r.Name)
		version, ok := have[r.Packages[0]]
		if !ok {
			return out, fmt.Errorf("install %s: dpkg succeeded but %s is not installed in %s", r.Name, r.Packages[0], t)
		}
		verified, err := in.verify(ctx, t, tool, r.Name)
		if err != nil {
			return out, err
		}
		state[r.Name] = version
		if err := writeState(ctx, t, state); err != nil {
			return out, err
		}
		progress(fmt.Sprintf("verified %s: %s", r.Name, verified))
		out = append(out, Installed{Name: r.Name, Kind: r.Kind, Version: version, Verified: verified,
			AlreadyPresent: len(missing) == 0, Downloaded: downloaded, Duration: time.Since(start)})
	}
	return out, nil
}

// suiteCodename is what a Debian codename looks like ("bookworm", "trixie").
var suiteCodename = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

// policyRCD keeps package scripts from starting services while installing (Debian policy's invoke-rc.d hook):
// there is no init system to start them with in a template or a guest.
const policyRCD = "/usr/sbin/policy-rc.d"

// dpkgInstall downloads and installs the missing packages (and whatever they need that the target lacks). On
// failure the packages that were new are purged again.
func (in *Installer) dpkgInstall(ctx context.Context, t Target, status []byte, have map[string]string, pkgs []string, progress func(string)) (bool, error) {
	rel, err := t.ReadFile(ctx, "/etc/os-release", 64<<10)
	if errors.Is(err, fs.ErrNotExist) {
		rel, err = t.ReadFile(ctx, "/usr/lib/os-release", 64<<10)
	}
	if err != nil {
		return false, fmt.Errorf("%s: read os-release to find its Debian suite: %w", t, err)
	}
	id, suite := osRelease(rel)
	if id != "debian" || suite == "" {
		return false, fmt.Errorf("%s is %q %q, not a Debian release with a codename: Debian tools (%s) install only into Debian templates",
			t, id, suite, strings.Join(pkgs, ", "))
	}
	// The guest wrote that file: the suite becomes part of a host path and apt's sources, so take only a codename.
	if !suiteCodename.MatchString(suite) {
		return false, fmt.Errorf("%s names its Debian suite %q, which is not a codename", t, suite)
	}
	files, err := in.apt.plan(ctx, suite, status, pkgs, progress)
	if err != nil {
		return false, err
	}
	if len(files) == 0 {
		return false, fmt.Errorf("apt planned nothing to install for %s on %s, yet dpkg does not list them installed", strings.Join(pkgs, ", "), t)
	}
	var total int64
	for _, f := range files {
		total += f.Size
	}
	progress(fmt.Sprintf("fetching %d Debian packages for %s (%s)", len(files), strings.Join(pkgs, ", "), megabytes(total)))
	tmp := path.Join(ToolsRoot, ".tmp", "debs-"+randHex())
	defer in.cleanup(t, tmp)
	downloaded := false
	var paths, fresh []string
	for _, f := range files {
		got, err := in.cache.fetch(ctx, f.URL, Checksum{Algo: "sha256", Hex: f.SHA256}, f.File, func(string) {})
		if err != nil {
			return downloaded, fmt.Errorf("install %s: %w", strings.Join(pkgs, ", "), err)
		}
		downloaded = downloaded || got.Downloaded
		fh, err := os.Open(got.Path)
		if err != nil {
			return downloaded, err
		}
		p := path.Join(tmp, f.File)
		err = t.WriteFile(ctx, p, fh, 0o644)
		fh.Close()
		if err != nil {
			return downloaded, fmt.Errorf("install %s: copy %s into %s: %w", strings.Join(pkgs, ", "), f.File, t, err)
		}
		paths = append(paths, p)
		if _, ok := have[f.Package()]; !ok {
			fresh = append(fresh, f.Package())
		}
	}
	hadPolicy, err := t.Exists(ctx, policyRCD)
	if err != nil {
		return downloaded, err
	}
	if !hadPolicy {
		if err := t.WriteFile(ctx, policyRCD, strings.NewReader("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
			return downloaded, err
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, _ = t.Run(cctx, []string{"rm", "-f", policyRCD}, baseEnv())
		}()
	}
	progress(fmt.Sprintf("installing %d Debian packages into %s", len(paths), t))
	env := baseEnv()
	env["DEBIAN_FRONTEND"] = "noninteractive"
	res, err := t.Run(ctx, append([]string{"dpkg", "--force-confdef", "--force-confold", "-i"}, paths...), env)
	if err == nil && res.ExitCode == 0 {
		return downloaded, nil
	}
	why := ""
	if err != nil {
		why = err.Error()
	} else {
		why = fmt.Sprintf("exit %d: %s", res.ExitCode, strings.TrimSpace(tail(res.Output, 15)))
	}
	if len(fresh) > 0 {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if pres, perr := t.Run(cctx, append([]string{"dpkg", "--purge"}, fresh...), env); perr != nil || pres.ExitCode != 0 {
			in.log.Error("tool install: purge after a failed dpkg", "target", t.String(), "packages", fresh, "err", perr)
		}
	}
	return downloaded, fmt.Errorf("install %s: dpkg -i in %s failed (%s); the new packages were purged again", strings.Join(pkgs, ", "), t, why)
}

// readState reads StateFile; a target without one has no tools recorded.
func readState(ctx context.Context, t Target) (map[string]string, error) {
	b, err := t.ReadFile(ctx, StateFile, 1<<20)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", StateFile, err)
	}
	var doc struct {
		Tools map[string]string `json:"tools"`
	}
	if err := json.Unmarshal(b, &doc); err != nil || doc.Tools == nil {
		// Rewritten by the next successful install; the tools themselves are still there.
		return map[string]string{}, nil
	}
	return doc.Tools, nil
}

func writeState(ctx context.Context, t Target, state map[string]string) error {
	b, err := json.MarshalIndent(struct {
		Tools map[string]string `json:"tools"`
	}{state}, "", "  ")
	if err != nil {
		return err
	}
	if err := t.WriteFile(ctx, StateFile, strings.NewReader(string(b)+"\n"), 0o644); err != nil {
		return fmt.Errorf("record installed tools: %w", err)
	}
	return nil
}

func baseEnv() map[string]string {
	return map[string]string{"PATH": targetPath, "HOME": "/root", "LC_ALL": "C"}
}

func orDiscard(p func(string)) func(string) {
	if p == nil {
		return func(string) {}
	}
	return p
}

func randHex() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
