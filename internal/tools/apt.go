//go:build linux

package tools

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// debianKeyring is the archive keyring of Debian hosts (package debian-archive-keyring, which debootstrap
// depends on): it checks the mirror's signed Release files.
const debianKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// debFile is one package file apt chose to download.
type debFile struct {
	URL    string
	File   string // name_version_arch.deb
	Size   int64
	SHA256 string
}

// Package is the package name, the part of the file name before its first '_'.
func (d debFile) Package() string { name, _, _ := strings.Cut(d.File, "_"); return name }

// aptHost computes, with the host's apt, which package files a target must install to get some packages: apt
// runs against the target's own dpkg database and a private configuration for the target's suite (own sources,
// lists, caches; nothing of the host's apt configuration), so that only what the target lacks is fetched.
type aptHost struct {
	dir    string // cache directory for apt's lists, one subdirectory per mirror and suite
	mirror string
	maxAge time.Duration
}

// dpkgArch is the Debian architecture of this host, which the guests share.
func dpkgArch() string {
	switch runtime.GOARCH {
	case "386":
		return "i386"
	case "arm":
		return "armhf"
	}
	return runtime.GOARCH // amd64, arm64, riscv64, ppc64le, s390x match
}

// plan returns the files to install for pkgs on a target whose dpkg status file is status and whose Debian suite
// is suite. The package lists are downloaded once and refreshed when older than maxAge.
func (a *aptHost) plan(ctx context.Context, suite string, status []byte, pkgs []string, progress func(string)) ([]debFile, error) {
	if !suiteCodename.MatchString(suite) {
		return nil, fmt.Errorf("Debian suite %q is not a codename", suite)
	}
	bin, err := exec.LookPath("apt-get")
	if err != nil {
		return nil, errors.New("installing Debian tools into a running VM needs apt-get on the host (a Debian host): " +
			"bake them into the template instead (aetherium image build --tools ...)")
	}
	if _, err := os.Stat(debianKeyring); err != nil {
		return nil, fmt.Errorf("installing Debian tools needs Debian's archive keyring on the host (apt-get install debian-archive-keyring): %w", err)
	}
	sum := sha256.Sum256([]byte(a.mirror))
	dir := filepath.Join(a.dir, suite+"-"+dpkgArch()+"-"+hex.EncodeToString(sum[:4]))
	for _, d := range []string{"lists/partial", "cache/archives/partial", "parts", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("apt cache: %w", err)
		}
	}
	// One planner per directory at a time: apt's own locks are off (Debug::NoLocking, as the host's apt must not
	// be locked out), and an update must not change the lists under a concurrent plan.
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("apt cache: %w", err)
	}
	defer lock.Close()
	if err := flockCtx(ctx, lock); err != nil {
		return nil, fmt.Errorf("apt cache: lock %s: %w", dir, err)
	}
	sources := fmt.Sprintf("deb [signed-by=%s] %s %s main\n", debianKeyring, a.mirror, suite)
	if err := writeFileAtomic(filepath.Join(dir, "sources.list"), []byte(sources)); err != nil {
		return nil, fmt.Errorf("apt cache: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, "apt.conf"), nil); err != nil {
		return nil, fmt.Errorf("apt cache: %w", err)
	}
	st, err := os.CreateTemp(dir, "status-*")
	if err != nil {
		return nil, fmt.Errorf("apt cache: %w", err)
	}
	defer os.Remove(st.Name())
	if _, err := st.Write(status); err != nil {
		st.Close()
		return nil, fmt.Errorf("apt cache: %w", err)
	}
	if err := st.Close(); err != nil {
		return nil, fmt.Errorf("apt cache: %w", err)
	}
	ext := st.Name() + ".ext"
	defer os.Remove(ext)
	opts := []string{
		"-o", "Dir::Etc::SourceList=" + filepath.Join(dir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=" + filepath.Join(dir, "parts"),
		"-o", "Dir::Etc::Parts=" + filepath.Join(dir, "parts"),
		"-o", "Dir::Etc::Preferences=" + filepath.Join(dir, "parts", "none"),
		"-o", "Dir::Etc::PreferencesParts=" + filepath.Join(dir, "parts"),
		"-o", "Dir::State=" + filepath.Join(dir, "state"),
		"-o", "Dir::State::Lists=" + filepath.Join(dir, "lists"),
		"-o", "Dir::State::status=" + st.Name(),
		"-o", "Dir::State::extended_states=" + ext,
		"-o", "Dir::Cache=" + filepath.Join(dir, "cache"),
		"-o", "Debug::NoLocking=1",
		"-o", "APT::Architecture=" + dpkgArch(),
		"-o", "APT::Architectures::=" + dpkgArch(),
		"-o", "Acquire::Languages=none",
		"-o", "APT::Install-Recommends=false",
		"-o", "Acquire::ForceHash=SHA256",
	}
	env := append(os.Environ(), "APT_CONFIG="+filepath.Join(dir, "apt.conf"), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	aptRun := func(args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, bin, append(append([]string{}, opts...), args...)...)
		cmd.Env = env
		var out bytes.Buffer
		cmd.Stdout = &out
		cmd.Stderr = &out
		err := cmd.Run()
		return out.Bytes(), err
	}
	stamp := filepath.Join(dir, "updated")
	updated := false
	update := func() error {
		progress(fmt.Sprintf("updating the package lists of Debian %s from %s", suite, a.mirror))
		out, err := aptRun("-q", "update")
		if err != nil || bytes.Contains(out, []byte("\nE: ")) || bytes.HasPrefix(out, []byte("E: ")) {
			return fmt.Errorf("apt-get update for Debian %s from %s failed (is the mirror reachable from this host?): %v: %s",
				suite, a.mirror, err, tail(out, 10))
		}
		updated = true
		return writeFileAtomic(stamp, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"))
	}
	if fi, err := os.Stat(stamp); err != nil || time.Since(fi.ModTime()) > a.maxAge {
		if uerr := update(); uerr != nil {
			if err != nil { // never updated: nothing to fall back on
				return nil, uerr
			}
			progress(fmt.Sprintf("%v; using the package lists of %s", uerr, fi.ModTime().UTC().Format(time.RFC3339)))
		}
	}
	args := append([]string{"-qq", "install", "--print-uris", "-y", "--no-install-recommends", "--no-remove"}, pkgs...)
	out, err := aptRun(args...)
	if err != nil && !updated {
		// Lists older than the mirror (a package renamed or a point release): once more with fresh ones.
		if uerr := update(); uerr == nil {
			out, err = aptRun(args...)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("apt cannot install %s on this template (Debian %s): %w: %s", strings.Join(pkgs, ", "), suite, err, tail(out, 15))
	}
	return parsePrintURIs(out)
}

// printURIPattern is one line of apt-get --print-uris: 'URL' file size SHA256:hex.
var printURIPattern = regexp.MustCompile(`^'([^']+)' (\S+) ([0-9]+) SHA256:([0-9a-f]{64})$`)

func parsePrintURIs(out []byte) ([]debFile, error) {
	var files []debFile
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "'") {
			continue
		}
		m := printURIPattern.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("apt: unexpected --print-uris line %q", line)
		}
		if !strings.HasSuffix(m[2], ".deb") || strings.ContainsAny(m[2], "/\\") {
			return nil, fmt.Errorf("apt: unexpected package file %q", m[2])
		}
		size, _ := strconv.ParseInt(m[3], 10, 64)
		files = append(files, debFile{URL: m[1], File: m[2], Size: size, SHA256: m[4]})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].File < files[j].File })
	return files, nil
}

// flockCtx takes an exclusive lock, giving up when ctx ends.
func flockCtx(ctx context.Context, f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// dpkgInstalled returns the installed packages of a dpkg status file: name -> version.
func dpkgInstalled(status []byte) map[string]string {
	out := map[string]string{}
	var name, version, state string
	flush := func() {
		if f := strings.Fields(state); name != "" && len(f) == 3 && f[2] == "installed" {
			out[name] = version
		}
		name, version, state = "", "", ""
	}
	sc := bufio.NewScanner(bytes.NewReader(status))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			flush()
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue
		}
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "Package":
			name = strings.TrimSpace(v)
		case "Version":
			version = strings.TrimSpace(v)
		case "Status":
			state = v
		}
	}
	flush()
	return out
}

// osRelease reads ID and VERSION_CODENAME from an os-release file.
func osRelease(b []byte) (id, codename string) {
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"'`)
		switch k {
		case "ID":
			id = v
		case "VERSION_CODENAME":
			codename = v
		}
	}
	return id, codename
}

// tail is the last n lines of out, for error messages.
func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
