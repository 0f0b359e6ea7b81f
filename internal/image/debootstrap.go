//go:build linux

package image

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults of Debian builds.
const (
	DefaultDebianSuite  = "bookworm"
	DefaultDebianMirror = "http://deb.debian.org/debian"
	// debianVariant is debootstrap's smallest variant that still has apt: essential and required packages.
	debianVariant = "minbase"
	// debianRecipe changes whenever what a Debian build does changes (debootstrap's options, the clean-up after
	// it), so that old inputs hashes stop matching.
	debianRecipe = 1
)

// DefaultDebianPackages are installed in every Debian template on top of the minbase variant: CA certificates, so
// that a coding agent can reach HTTPS services. The agent is static and needs no package. A new slice each call.
func DefaultDebianPackages() []string { return []string{"ca-certificates"} }

// Package is one installed Debian package, as dpkg records it.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

var (
	// suitePattern accepts codenames and aliases (bookworm, stable, sid) and nothing that is not one path
	// component: the suite names debootstrap's script file.
	suitePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,63}$`)
	// packagePattern is Debian Policy 5.6.1: lower case letters, digits, '+', '-' and '.', at least two characters,
	// starting with a letter or digit. Version pins and architecture qualifiers are not accepted by --include.
	packagePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
)

// debianSource is a tree made by debootstrap from a mirror.
type debianSource struct {
	suite, mirror string
	packages      []string // sorted, unique, defaults included
	bin           string   // debootstrap; "" until preflight looks it up
}

// newDebianSource checks the options of a Debian build without touching anything.
func newDebianSource(opts BuildOptions, bin string) (*debianSource, error) {
	if !suitePattern.MatchString(opts.FromDebian) {
		return nil, fmt.Errorf("image build: invalid Debian suite %q: use a codename such as %s (lower case letters, digits, '.' and '-')", opts.FromDebian, DefaultDebianSuite)
	}
	mirror, err := checkMirror(opts.Mirror)
	if err != nil {
		return nil, err
	}
	pkgs := DefaultDebianPackages()
	var bad []string
	for _, p := range opts.Packages {
		if !packagePattern.MatchString(p) {
			bad = append(bad, fmt.Sprintf("%q", p))
			continue
		}
		pkgs = append(pkgs, p)
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("image build: invalid Debian package name %s: names are lower case letters, digits, '+', '-' and '.', at least two characters, starting with a letter or digit (no versions or architectures)", strings.Join(bad, ", "))
	}
	sort.Strings(pkgs)
	return &debianSource{suite: opts.FromDebian, mirror: mirror, packages: slices.Compact(pkgs), bin: bin}, nil
}

// checkMirror returns the mirror URL in the form that is hashed (no trailing slash), or why it cannot be one.
func checkMirror(m string) (string, error) {
	if m == "" {
		return DefaultDebianMirror, nil
	}
	u, err := url.Parse(m)
	if err != nil || strings.ContainsAny(m, " \t\r\n?#") {
		return "", fmt.Errorf("image build: invalid Debian mirror %q: give a URL such as %s", m, DefaultDebianMirror)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return "", fmt.Errorf("image build: invalid Debian mirror %q: no host", m)
		}
	case "file":
		if !strings.HasPrefix(u.Path, "/") {
			return "", fmt.Errorf("image build: invalid Debian mirror %q: a file mirror needs an absolute path", m)
		}
	default:
		return "", fmt.Errorf("image build: invalid Debian mirror %q: the scheme must be http, https or file", m)
	}
	return strings.TrimRight(m, "/"), nil
}

func (d *debianSource) describe() string {
	return fmt.Sprintf("source debian\ndebian-recipe %d\nsuite %s\nmirror %s\nvariant %s\npackages %s\n",
		debianRecipe, d.suite, d.mirror, debianVariant, strings.Join(d.packages, ","))
}

func (d *debianSource) label() string { return "debian:" + d.suite }

// preflight finds debootstrap and checks that it knows the suite and that it can run (root).
func (d *debianSource) preflight(context.Context) error {
	if d.bin == "" {
		p, err := exec.LookPath("debootstrap")
		if err != nil {
			// Not on a non-root PATH, but that is not a reason to say it is missing.
			for _, c := range []string{"/usr/sbin/debootstrap", "/sbin/debootstrap"} {
				if fi, serr := os.Stat(c); serr == nil && fi.Mode().IsRegular() {
					p, err = c, nil
					break
				}
			}
		}
		if err != nil {
			return errors.New("image build: debootstrap is not installed: apt-get install debootstrap")
		}
		d.bin = p
	} else if fi, err := os.Stat(d.bin); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("image build: debootstrap %s is not an executable file (apt-get install debootstrap)", d.bin)
	}
	scripts := filepath.Join("/usr/share/debootstrap", "scripts")
	if dir := os.Getenv("DEBOOTSTRAP_DIR"); dir != "" {
		scripts = filepath.Join(dir, "scripts")
	}
	if _, err := os.Stat(scripts); err == nil {
		if _, err := os.Stat(filepath.Join(scripts, d.suite)); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("image build: debootstrap does not know the suite %q (no %s): pick one of `ls %s` such as %s, or install a newer debootstrap",
				d.suite, filepath.Join(scripts, d.suite), scripts, DefaultDebianSuite)
		}
	}
	if os.Geteuid() != 0 {
		return errors.New("image build: building from Debian needs root (debootstrap chroots into the new tree, mounts /proc there and creates device nodes): run it as root")
	}
	return nil
}

// fill runs debootstrap into staging and prepares the tree for the shared tail: drops the host's resolver
// configuration and apt's caches, and records the installed packages.
func (d *debianSource) fill(ctx context.Context, staging string, progress io.Writer) (filled, error) {
	start := time.Now()
	fmt.Fprintf(progress, "debootstrap %s from %s (variant %s, packages %s)\n", d.suite, d.mirror, debianVariant, strings.Join(d.packages, ","))
	if err := d.run(ctx, staging, progress, start); err != nil {
		return filled{}, err
	}
	fmt.Fprintf(progress, "debootstrap finished in %s\n", time.Since(start).Round(time.Second))
	// debootstrap unmounts what it mounted when it ends normally; make sure, before anything walks the tree.
	if err := unmountUnder(staging); err != nil {
		return filled{}, fmt.Errorf("image build: %w", err)
	}

	root, err := os.OpenRoot(staging)
	if err != nil {
		return filled{}, fmt.Errorf("image build: %w", err)
	}
	defer root.Close()
	pkgs, err := installedPackages(root)
	if err != nil {
		return filled{}, err
	}
	var missing []string
	for _, p := range d.packages {
		if !slices.ContainsFunc(pkgs, func(q Package) bool { return q.Name == p }) {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return filled{}, fmt.Errorf("image build: debootstrap succeeded but did not install %s", strings.Join(missing, ", "))
	}
	sourceID := d.mirror + " " + d.suite
	if date := releaseDate(root); date != "" {
		sourceID += " (Release of " + date + ")"
	}
	// debootstrap copies the build host's resolv.conf, which says nothing about a VM's network: the guest's comes
	// from the agent's network setup.
	if err := root.Remove("etc/resolv.conf"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return filled{}, fmt.Errorf("image build: remove the host's /etc/resolv.conf: %w", err)
	}
	freed, err := cleanApt(root)
	if err != nil {
		return filled{}, err
	}
	fmt.Fprintf(progress, "%d packages installed; removed %d MiB of apt caches and lists\n", len(pkgs), freed>>20)

	st := filled{SourceID: sourceID, Packages: pkgs}
	err = filepath.WalkDir(staging, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == staging {
			return nil
		}
		st.Entries++
		if e.Type().IsRegular() {
			fi, err := e.Info()
			if err != nil {
				return err
			}
			st.Bytes += fi.Size()
		}
		return nil
	})
	if err != nil {
		return filled{}, fmt.Errorf("image build: measure the tree: %w", err)
	}
	return st, nil
}

// run runs debootstrap in its own process group, forwarding its lines to progress. On cancellation the whole group
// gets SIGTERM first, so that debootstrap's exit trap unmounts what it mounted in the target, then SIGKILL.
func (d *debianSource) run(ctx context.Context, staging string, progress io.Writer, start time.Time) error {
	cmd := exec.CommandContext(ctx, d.bin, "--variant="+debianVariant, "--include="+strings.Join(d.packages, ","),
		d.suite, staging, d.mirror)
	// chroot, mount and ldconfig live in sbin, which a user's PATH may lack; an empty PATH element would mean the
	// current directory, so none is added.
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	if p := os.Getenv("PATH"); p != "" {
		path = p + ":/usr/local/sbin:/usr/sbin:/sbin"
	}
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive", "PATH="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	lw := &lineWriter{out: progress, start: start}
	cmd.Stdout, cmd.Stderr = lw, lw
	err := cmd.Run()
	lw.flush()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		if cmd.Process != nil {
			// Whatever ignored SIGTERM; the group cannot have been reused while one of its members lives.
			_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		}
		return fmt.Errorf("image build: debootstrap interrupted: %w", context.Cause(ctx))
	}
	out := strings.Join(lw.tail, "\n")
	hint := ""
	switch {
	case strings.Contains(out, "Failed getting release file") || strings.Contains(out, "Couldn't download"):
		hint = fmt.Sprintf(" (is the mirror %s reachable from this host, and does it carry %s?)", d.mirror, d.suite)
	case strings.Contains(out, "Couldn't find these debs"):
		hint = " (check the package names: the suite has no such package)"
	}
	log := logTail(staging, 15)
	if log == "" {
		log = "(no debootstrap.log)"
	}
	return fmt.Errorf("image build: debootstrap %s from %s failed%s: %w\ndebootstrap said:\n%s\nlast lines of its log:\n%s",
		d.suite, d.mirror, hint, err, out, log)
}

// logTail is the end of debootstrap's log in the target, read through an os.Root (the target is a tree other
// programs wrote).
func logTail(staging string, lines int) string {
	root, err := os.OpenRoot(staging)
	if err != nil {
		return ""
	}
	defer root.Close()
	b, err := root.ReadFile("debootstrap/debootstrap.log")
	if err != nil {
		return ""
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// lineWriter forwards a command's output line by line, with the time since the build started, and keeps the last
// lines for an error message. exec calls Write from one goroutine at a time when Stdout and Stderr are the same.
type lineWriter struct {
	out   io.Writer
	start time.Time
	buf   []byte
	tail  []string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.line(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 { // a line that long is not worth holding on to
		w.flush()
	}
	return len(p), nil
}

func (w *lineWriter) flush() {
	if len(w.buf) > 0 {
		w.line(string(w.buf))
		w.buf = w.buf[:0]
	}
}

func (w *lineWriter) line(s string) {
	s = strings.TrimRight(s, "\r\t ")
	if s == "" {
		return
	}
	fmt.Fprintf(w.out, "debootstrap +%s: %s\n", time.Since(w.start).Round(time.Second), s)
	if w.tail = append(w.tail, s); len(w.tail) > 20 {
		w.tail = w.tail[1:]
	}
}

// installedPackages reads dpkg's database in the tree (no chroot needed: it is a text file).
func installedPackages(root *os.Root) ([]Package, error) {
	f, err := root.Open("var/lib/dpkg/status")
	if err != nil {
		return nil, fmt.Errorf("image build: read the installed packages: %w", err)
	}
	defer f.Close()
	pkgs, err := parseDpkgStatus(f)
	if err != nil {
		return nil, fmt.Errorf("image build: read the installed packages: %w", err)
	}
	if len(pkgs) == 0 {
		return nil, errors.New("image build: dpkg's database in the new tree lists no installed package")
	}
	return pkgs, nil
}

// parseDpkgStatus returns the packages of a dpkg status file whose state is "installed", sorted by name.
func parseDpkgStatus(r io.Reader) ([]Package, error) {
	var out []Package
	var name, version, status string
	flush := func() {
		if f := strings.Fields(status); name != "" && len(f) == 3 && f[2] == "installed" {
			out = append(out, Package{Name: name, Version: version})
		}
		name, version, status = "", "", ""
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			flush()
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // continuation of a multi-line field
		}
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "Package":
			name = strings.TrimSpace(v)
		case "Version":
			version = strings.TrimSpace(v)
		case "Status":
			status = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	flush()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// releaseDate is the Date of the suite's Release file that debootstrap fetched, "" when there is none.
func releaseDate(root *os.Root) string {
	dir, err := root.Open("var/lib/apt/lists")
	if err != nil {
		return ""
	}
	names, _ := dir.Readdirnames(-1)
	dir.Close()
	sort.Strings(names)
	for _, n := range names {
		if !strings.HasSuffix(n, "_Release") && !strings.HasSuffix(n, "_InRelease") {
			continue
		}
		b, err := root.ReadFile("var/lib/apt/lists/" + n)
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Date:"); ok {
				return strings.TrimSpace(v)
			}
		}
	}
	return ""
}

// cleanApt removes downloaded packages, apt's binary caches and the package lists (apt-get update brings them
// back in a VM); the directories themselves and their partial/ and lock stay, as apt expects them. It returns
// the bytes freed.
func cleanApt(root *os.Root) (int64, error) {
	var freed int64
	for _, dir := range []string{"var/cache/apt", "var/cache/apt/archives", "var/cache/apt/archives/partial",
		"var/lib/apt/lists", "var/lib/apt/lists/partial"} {
		f, err := root.Open(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			return freed, fmt.Errorf("image build: clean %s: %w", dir, err)
		}
		entries, err := f.ReadDir(-1)
		f.Close()
		if err != nil {
			return freed, fmt.Errorf("image build: clean %s: %w", dir, err)
		}
		for _, e := range entries {
			// In var/cache/apt only the binary caches go; the archives directory is cleaned on its own.
			if e.IsDir() || e.Name() == "lock" || (dir == "var/cache/apt" && !strings.HasSuffix(e.Name(), ".bin")) {
				continue
			}
			if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
				freed += fi.Size()
			}
			if err := root.Remove(dir + "/" + e.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return freed, fmt.Errorf("image build: clean %s: %w", dir, err)
			}
		}
	}
	return freed, nil
}
