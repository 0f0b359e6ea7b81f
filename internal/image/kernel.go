//go:build linux

package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	_ "embed" // the guest kernel config ships inside the binary
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The guest kernel is built from Debian's linux-source with a project-owned copy of Firecracker's guest config.
// Changing the config changes the cache key, so every machine rebuilds exactly once.
//
//go:embed kernelconfig/x86_64-6.1.config
var embeddedKernelConfig []byte

const (
	// KernelFile is the file name of a kernel in the kernel store and in the build cache.
	KernelFile = "vmlinux"
	// DefaultKernelName is the name under which `aetherium image kernel build` installs its result.
	DefaultKernelName = "default"
	// DefaultKernelSource is Debian's linux-source-6.1 tarball (package linux-source-6.1).
	DefaultKernelSource = "/usr/src/linux-source-6.1.tar.xz"

	// kernelRecipe names the build recipe in the cache key: bump it whenever BuildKernel builds differently, so
	// that results of the old recipe are not reused.
	kernelRecipe          = "aetherium-kernel-recipe-1"
	kernelKeyLen          = 20
	kernelExtractedMarker = ".aetherium-extracted"
	kernelBuildLog        = "build.log"
	kernelLogTail         = 20
	kernelNotePeriod      = 30 * time.Second
	kernelLockPoll        = 500 * time.Millisecond
)

// kernelBanner is the start of init/version.c's linux_banner; the release follows it. Requiring digits after it
// skips printf formats such as "Linux version %s".
var kernelBanner = regexp.MustCompile(`Linux version ([0-9]+\.[0-9]+[^\s\x00]*)`)

// DefaultKernelConfig returns (a copy of) the embedded guest kernel config.
func DefaultKernelConfig() []byte { return bytes.Clone(embeddedKernelConfig) }

// KernelCacheKey is the build cache key of a kernel source tarball and config, both given as hex sha256. The
// formula is fixed: caches made by earlier runs (and by CI) are found through it.
func KernelCacheKey(sourceSHA256, configSHA256 string) string {
	sum := sha256.Sum256([]byte(kernelRecipe + "\nsource-sha256 " + sourceSHA256 + "\nconfig-sha256 " + configSHA256 + "\n"))
	return hex.EncodeToString(sum[:])[:kernelKeyLen]
}

// DefaultKernelCacheDir is AETHERIUM_CACHE_DIR, else /var/cache/aetherium for root, else the user's cache
// directory ($XDG_CACHE_HOME or ~/.cache) + /aetherium. The cache lives outside any checkout so that one build
// serves every clone and CI run on the machine.
func DefaultKernelCacheDir() (string, error) {
	if d := os.Getenv("AETHERIUM_CACHE_DIR"); d != "" {
		return d, nil
	}
	if os.Geteuid() == 0 {
		return "/var/cache/aetherium", nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("kernel cache: no AETHERIUM_CACHE_DIR and no user cache directory (set AETHERIUM_CACHE_DIR, XDG_CACHE_HOME or HOME): %w", err)
	}
	return filepath.Join(d, "aetherium"), nil
}

// KernelBuild describes a kernel in the build cache (<cache>/kernels/<key>/manifest.json).
type KernelBuild struct {
	Key          string    `json:"key"`
	Source       string    `json:"source"`        // path of the source tarball
	SourceSHA256 string    `json:"source_sha256"` // of the source tarball
	ConfigSHA256 string    `json:"config_sha256"`
	Release      string    `json:"release"` // from the vmlinux's "Linux version" banner, e.g. 6.1.158
	SHA256       string    `json:"sha256"`  // of the vmlinux
	Size         int64     `json:"size"`
	BuiltAt      time.Time `json:"built_at"`
	BuildSeconds float64   `json:"build_seconds"`

	// Path is the absolute path of the cached vmlinux; Cached says the build found it there and ran nothing.
	// Neither is stored.
	Path   string `json:"-"`
	Cached bool   `json:"-"`
}

// KernelBuildOptions say what to build and where.
type KernelBuildOptions struct {
	// Source is a Linux source tarball (.tar.xz with one top directory); default DefaultKernelSource.
	Source string
	// Config is a kernel .config file; default the embedded Firecracker guest config.
	Config string
	// CacheDir holds builds and results; default DefaultKernelCacheDir().
	CacheDir string
	// Jobs is make's -j; default runtime.NumCPU().
	Jobs int
	// Progress, when set, receives a line per phase and, during make, one about every 30 s.
	Progress io.Writer
	// Log, when set, receives a record of each build (nil discards).
	Log *slog.Logger
}

// kernelPlan is what a build of KernelBuildOptions is: its inputs resolved, its key and where its result lives.
type kernelPlan struct {
	want      KernelBuild
	config    []byte
	cacheDir  string
	resultDir string
	jobs      int
}

// planKernel resolves opts (defaults, absolute paths) and hashes the inputs. BuildKernel and CachedKernel share
// it, so that what a build leaves is what a look-up finds.
func planKernel(opts KernelBuildOptions, p *kernelProgress) (kernelPlan, error) {
	if runtime.GOARCH != "amd64" {
		return kernelPlan{}, fmt.Errorf("kernel build: the guest kernel is x86-64 and this host is %s: build it on an x86-64 machine and `aetherium image kernel import` the vmlinux", runtime.GOARCH)
	}
	source := opts.Source
	if source == "" {
		source = DefaultKernelSource
	}
	source, err := filepath.Abs(source)
	if err != nil {
		return kernelPlan{}, fmt.Errorf("kernel build: %w", err)
	}
	config := embeddedKernelConfig
	if opts.Config != "" {
		if config, err = os.ReadFile(opts.Config); err != nil {
			return kernelPlan{}, fmt.Errorf("kernel build: read the kernel config: %w", err)
		}
	}
	cacheDir := opts.CacheDir
	if cacheDir == "" {
		if cacheDir, err = DefaultKernelCacheDir(); err != nil {
			return kernelPlan{}, err
		}
	}
	if cacheDir, err = filepath.Abs(cacheDir); err != nil {
		return kernelPlan{}, fmt.Errorf("kernel build: %w", err)
	}
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}

	p.printf("hashing %s", source)
	sourceSum, _, err := kernelFileSHA256(source)
	if errors.Is(err, fs.ErrNotExist) {
		return kernelPlan{}, fmt.Errorf("kernel build: source tarball %s is missing (apt-get install linux-source-6.1, or pass --source): %w", source, err)
	} else if err != nil {
		return kernelPlan{}, fmt.Errorf("kernel build: hash the source tarball: %w", err)
	}
	configSum := sha256.Sum256(config)
	want := KernelBuild{
		Key:          KernelCacheKey(sourceSum, hex.EncodeToString(configSum[:])),
		Source:       source,
		SourceSHA256: sourceSum,
		ConfigSHA256: hex.EncodeToString(configSum[:]),
	}
	return kernelPlan{want: want, config: config, cacheDir: cacheDir, jobs: jobs,
		resultDir: filepath.Join(cacheDir, "kernels", want.Key)}, nil
}

// CachedKernel returns the kernel that BuildKernel(opts) would return, without building: ok is false when the
// cache does not hold it.
func CachedKernel(opts KernelBuildOptions) (b KernelBuild, ok bool, err error) {
	plan, err := planKernel(opts, &kernelProgress{w: opts.Progress, start: time.Now()})
	if err != nil {
		return KernelBuild{}, false, err
	}
	return readKernelCache(plan.resultDir, plan.want)
}

// BuildKernel returns the cached kernel for the source and config, building it first when the cache lacks it.
// Builds of one key serialize on a lock file; an interrupted build leaves its tree, which the next one continues.
func BuildKernel(ctx context.Context, opts KernelBuildOptions) (KernelBuild, error) {
	start := time.Now()
	p := &kernelProgress{w: opts.Progress, start: start}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	plan, err := planKernel(opts, p)
	if err != nil {
		return KernelBuild{}, err
	}
	want, config, cacheDir, resultDir, jobs := plan.want, plan.config, plan.cacheDir, plan.resultDir, plan.jobs

	if b, ok, err := readKernelCache(resultDir, want); err != nil || ok {
		if ok {
			p.printf("kernel %s (Linux %s) is cached in %s", b.Key, b.Release, resultDir)
		}
		return b, err
	}

	buildRoot := filepath.Join(cacheDir, "kernel-build")
	if err := os.MkdirAll(buildRoot, 0o755); err != nil {
		return KernelBuild{}, fmt.Errorf("kernel build: create the cache directory (pass --cache-dir or set AETHERIUM_CACHE_DIR to a writable place): %w", err)
	}
	lockPath := filepath.Join(buildRoot, want.Key+".lock")
	unlock, err := lockKernelBuild(ctx, lockPath, want.Key, p)
	if err != nil {
		return KernelBuild{}, err
	}
	defer unlock()
	// Whoever held the lock may have finished this very build.
	if b, ok, err := readKernelCache(resultDir, want); err != nil || ok {
		if ok {
			p.printf("kernel %s (Linux %s) was built meanwhile; using it from %s", b.Key, b.Release, resultDir)
		}
		return b, err
	}

	r := &kernelRecipeRun{
		want: want, config: config, jobs: jobs, p: p, start: start,
		workDir: filepath.Join(buildRoot, want.Key), resultDir: resultDir,
	}
	b, err := r.run(ctx)
	if err != nil {
		log.Warn("kernel build failed", "key", want.Key, "log", r.logPath(), "err", err)
		return KernelBuild{}, err
	}
	// The lock file is only needed while a build can still happen; every later caller hits the cache before
	// locking, and a waiter still holding the old file re-checks the cache after locking.
	_ = os.Remove(lockPath)
	log.Info("built kernel", "key", b.Key, "release", b.Release, "seconds", b.BuildSeconds, "path", b.Path)
	return b, nil
}

// readKernelCache reports whether resultDir holds a finished build. The vmlinux is renamed into place last, so
// its presence is what counts; a missing or unreadable manifest (a build by an older tool) is rebuilt from it.
func readKernelCache(resultDir string, want KernelBuild) (KernelBuild, bool, error) {
	vmlinux := filepath.Join(resultDir, KernelFile)
	if _, err := os.Stat(vmlinux); errors.Is(err, fs.ErrNotExist) {
		return KernelBuild{}, false, nil
	} else if err != nil {
		return KernelBuild{}, false, fmt.Errorf("kernel build: look for a cached kernel: %w", err)
	}
	var b KernelBuild
	mb, err := os.ReadFile(filepath.Join(resultDir, ManifestFile))
	if err != nil || json.Unmarshal(mb, &b) != nil || b.Key != want.Key || b.SHA256 == "" {
		b = want
		if b.Release, err = ValidateKernel(vmlinux); err != nil {
			return KernelBuild{}, false, fmt.Errorf("kernel build: the cached kernel is unusable (remove %s and build again): %w", resultDir, err)
		}
		if b.SHA256, b.Size, err = kernelFileSHA256(vmlinux); err != nil {
			return KernelBuild{}, false, fmt.Errorf("kernel build: hash the cached kernel: %w", err)
		}
		if fi, err := os.Stat(vmlinux); err == nil {
			b.BuiltAt = fi.ModTime().UTC()
		}
		// Best effort: the next hit is cheaper with it, and this one is right without it.
		_ = writeKernelJSON(filepath.Join(resultDir, ManifestFile), b)
	}
	b.Path = vmlinux
	b.Cached = true
	return b, true, nil
}

// lockKernelBuild takes an exclusive flock on path, polling so that ctx can end the wait.
func lockKernelBuild(ctx context.Context, path, key string, p *kernelProgress) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kernel build: open the build lock: %w", err)
	}
	try := func() (bool, error) {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, unix.EWOULDBLOCK), errors.Is(err, unix.EINTR):
			return false, nil
		default:
			return false, fmt.Errorf("kernel build: lock %s: %w", path, err)
		}
	}
	ok, err := try()
	if err == nil && !ok {
		p.printf("waiting for another build of kernel %s to finish (it holds %s)", key, path)
		waitStart := time.Now()
		lastNote := waitStart
		tick := time.NewTicker(kernelLockPoll)
		defer tick.Stop()
		for err == nil && !ok {
			select {
			case <-ctx.Done():
				err = fmt.Errorf("kernel build: gave up waiting for the other build of %s: %w", key, ctx.Err())
			case now := <-tick.C:
				if now.Sub(lastNote) >= kernelNotePeriod {
					p.printf("still waiting for the other build of kernel %s (%s so far)", key, now.Sub(waitStart).Round(time.Second))
					lastNote = now
				}
				ok, err = try()
			}
		}
	}
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	// Closing the file releases the lock.
	return func() { _ = f.Close() }, nil
}

// kernelRecipeRun is one build of one key, done while holding its lock.
type kernelRecipeRun struct {
	want      KernelBuild
	config    []byte
	jobs      int
	p         *kernelProgress
	start     time.Time
	workDir   string // <cache>/kernel-build/<key>
	resultDir string // <cache>/kernels/<key>
	log       *os.File
}

func (r *kernelRecipeRun) logPath() string { return filepath.Join(r.workDir, kernelBuildLog) }

func (r *kernelRecipeRun) run(ctx context.Context) (KernelBuild, error) {
	src := filepath.Join(r.workDir, "src")
	if err := os.MkdirAll(r.workDir, 0o755); err != nil {
		return KernelBuild{}, fmt.Errorf("kernel build: create the build directory: %w", err)
	}
	lf, err := os.OpenFile(r.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return KernelBuild{}, fmt.Errorf("kernel build: open the build log: %w", err)
	}
	r.log = lf
	defer func() { _ = lf.Close() }() // a no-op error once the log is closed before moving it
	fmt.Fprintf(lf, "=== aetherium kernel build %s started %s: source %s, config sha256 %s, -j%d\n",
		r.want.Key, time.Now().UTC().Format(time.RFC3339), r.want.Source, r.want.ConfigSHA256, r.jobs)

	env := kernelBuildEnv(os.Environ())
	marker := filepath.Join(src, kernelExtractedMarker)
	if _, err := os.Stat(marker); err == nil {
		r.p.printf("reusing the source tree of an earlier build in %s (make continues where it stopped)", src)
	} else if errors.Is(err, fs.ErrNotExist) {
		// Without the marker the tree may be a partial extraction: start it over.
		r.p.printf("extracting %s", r.want.Source)
		if err := os.RemoveAll(src); err != nil {
			return KernelBuild{}, fmt.Errorf("kernel build: remove a partial source tree: %w", err)
		}
		if err := os.Mkdir(src, 0o755); err != nil {
			return KernelBuild{}, fmt.Errorf("kernel build: %w", err)
		}
		if err := r.exec(ctx, env, nil, "tar", "-xJf", r.want.Source, "-C", src, "--strip-components=1"); err != nil {
			return KernelBuild{}, r.failure("extracting the source", err)
		}
		if err := os.WriteFile(filepath.Join(src, ".config"), r.config, 0o644); err != nil {
			return KernelBuild{}, fmt.Errorf("kernel build: write .config: %w", err)
		}
		if err := os.WriteFile(marker, nil, 0o644); err != nil {
			return KernelBuild{}, fmt.Errorf("kernel build: write the extraction marker: %w", err)
		}
	} else {
		return KernelBuild{}, fmt.Errorf("kernel build: %w", err)
	}

	r.p.printf("make olddefconfig")
	if err := r.exec(ctx, env, nil, kernelMakeCommand(src, "olddefconfig")...); err != nil {
		return KernelBuild{}, r.failure("make olddefconfig", err)
	}
	r.p.printf("make -j%d vmlinux (full log: %s)", r.jobs, r.logPath())
	if err := r.makeVmlinux(ctx, env, src); err != nil {
		return KernelBuild{}, r.failure("make vmlinux", err)
	}
	return r.install(filepath.Join(src, KernelFile))
}

// makeVmlinux runs the long make, reporting the last line make printed about every 30 s.
func (r *kernelRecipeRun) makeVmlinux(ctx context.Context, env []string, src string) error {
	last := &makeLastLine{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		makeStart := time.Now()
		tick := time.NewTicker(kernelNotePeriod)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				r.p.printf("make vmlinux running for %s, last: %s", now.Sub(makeStart).Round(time.Second), last.get())
			}
		}
	}()
	err := r.exec(ctx, env, last, kernelMakeCommand(src, fmt.Sprintf("-j%d", r.jobs), "vmlinux")...)
	close(done)
	wg.Wait()
	return err
}

// install copies the built vmlinux into the cache. The manifest is written before the vmlinux is renamed into
// place, so a present vmlinux always has its manifest; then the build tree goes, keeping only the log.
func (r *kernelRecipeRun) install(built string) (b KernelBuild, err error) {
	release, err := ValidateKernel(built)
	if err != nil {
		return KernelBuild{}, r.failure("checking the built vmlinux", err)
	}
	r.p.printf("installing Linux %s into %s", release, r.resultDir)
	if err := os.MkdirAll(r.resultDir, 0o755); err != nil {
		return KernelBuild{}, fmt.Errorf("kernel build: %w", err)
	}
	defer func() {
		if err != nil {
			// Nothing half-installed: without its vmlinux the directory holds nothing of use.
			_ = os.RemoveAll(r.resultDir)
		}
	}()
	tmp := filepath.Join(r.resultDir, KernelFile+".tmp")
	sum, size, err := copyKernelFile(built, tmp, 0o444)
	if err != nil {
		return KernelBuild{}, fmt.Errorf("kernel build: copy the vmlinux into the cache: %w", err)
	}
	b = r.want
	b.Release, b.SHA256, b.Size = release, sum, size
	b.BuiltAt = time.Now().UTC()
	b.BuildSeconds = time.Since(r.start).Round(time.Millisecond).Seconds()
	if err := writeKernelJSON(filepath.Join(r.resultDir, ManifestFile), b); err != nil {
		return KernelBuild{}, fmt.Errorf("kernel build: write the cache manifest: %w", err)
	}
	final := filepath.Join(r.resultDir, KernelFile)
	if err := os.Rename(tmp, final); err != nil {
		return KernelBuild{}, fmt.Errorf("kernel build: %w", err)
	}
	if err := syncKernelDir(r.resultDir); err != nil {
		return KernelBuild{}, fmt.Errorf("kernel build: %w", err)
	}
	// From here on the result is in place; what follows is tidying and cannot fail the build.
	fmt.Fprintf(r.log, "=== finished %s: Linux %s, %d bytes, sha256 %s, %.0f s\n",
		b.BuiltAt.Format(time.RFC3339), release, size, sum, b.BuildSeconds)
	_ = r.log.Close()
	if err := os.Rename(r.logPath(), filepath.Join(r.resultDir, kernelBuildLog)); err != nil {
		r.p.printf("warning: could not keep the build log: %v", err)
	}
	if err := os.RemoveAll(r.workDir); err != nil {
		r.p.printf("warning: could not remove the build tree %s: %v", r.workDir, err)
	}
	b.Path = final
	r.p.printf("built kernel %s (Linux %s) in %s", b.Key, release, time.Since(r.start).Round(time.Second))
	return b, nil
}

// exec runs a build step with its output appended to the log (and to watch, when set). On cancellation make gets
// SIGTERM first, which it passes to its compilers and uses to delete half-written targets.
func (r *kernelRecipeRun) exec(ctx context.Context, env []string, watch io.Writer, argv ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	var out io.Writer = r.log
	if watch != nil {
		out = io.MultiWriter(r.log, watch)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Cancel = func() error { return cmd.Process.Signal(unix.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	fmt.Fprintf(r.log, "$ %s\n", strings.Join(argv, " "))
	err := cmd.Run()
	if errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("%s is not installed (the kernel build needs tar, xz-utils, make, gcc, flex, bison, bc, libelf-dev and libssl-dev): %w", argv[0], err)
	}
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

// failure wraps a failed step with the end of the build log, which is where the reason is.
func (r *kernelRecipeRun) failure(step string, err error) error {
	tail := kernelLogTailOf(r.logPath(), kernelLogTail)
	return fmt.Errorf("kernel build: %s failed: %w\n--- last lines of the build log ---\n%s\n--- full log: %s (the source tree is kept: running the build again continues it)",
		step, err, tail, r.logPath())
}

// kernelMakeCommand runs make at low CPU priority, so that a build on a shared machine leaves room for everything else.
func kernelMakeCommand(src string, args ...string) []string {
	argv := append([]string{"make", "-C", src}, args...)
	if nice, err := exec.LookPath("nice"); err == nil {
		argv = append([]string{nice, "-n", "10"}, argv...)
	}
	return argv
}

// kernelBuildEnv is env less what would change the kernel (ARCH, LOCALVERSION, KBUILD_*) or tie make to a
// calling make's jobserver, plus fixed build stamps so that equal inputs give an equal banner.
func kernelBuildEnv(env []string) []string {
	drop := map[string]bool{"MAKEFLAGS": true, "MFLAGS": true, "MAKELEVEL": true, "MAKEOVERRIDES": true,
		"ARCH": true, "CROSS_COMPILE": true, "LOCALVERSION": true, "KCONFIG_CONFIG": true}
	out := make([]string, 0, len(env)+3)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if drop[k] || strings.HasPrefix(k, "KBUILD_") {
			continue
		}
		out = append(out, kv)
	}
	return append(out, "KBUILD_BUILD_TIMESTAMP=1970-01-01", "KBUILD_BUILD_USER=aetherium", "KBUILD_BUILD_HOST=aetherium")
}

// kernelProgress writes timestamped lines; the make reporter and the build write to it from two goroutines.
type kernelProgress struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func (p *kernelProgress) printf(format string, args ...any) {
	if p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "[%s] %s\n", time.Since(p.start).Round(time.Second), fmt.Sprintf(format, args...))
}

// makeLastLine remembers the last complete non-empty line written to it (what make compiled last).
type makeLastLine struct {
	mu      sync.Mutex
	partial []byte
	line    string
}

func (l *makeLastLine) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, b...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		if s := strings.TrimSpace(string(l.partial[:i])); s != "" {
			l.line = strings.Join(strings.Fields(s), " ")
		}
		l.partial = l.partial[i+1:]
	}
	if len(l.partial) > 4096 { // a line that long is not a compile step
		l.partial = l.partial[:0]
	}
	return len(b), nil
}

func (l *makeLastLine) get() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.line == "" {
		return "(nothing printed yet)"
	}
	return l.line
}

// kernelLogTailOf returns the last n lines of a file (or why it cannot).
func kernelLogTailOf(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read the log: %v)", err)
	}
	defer f.Close()
	const window = 64 << 10 // 20 lines of compiler errors fit; the log can be megabytes
	var off int64
	if fi, err := f.Stat(); err == nil && fi.Size() > window {
		off = fi.Size() - window
	}
	b, err := io.ReadAll(io.NewSectionReader(f, off, window))
	if err != nil {
		return fmt.Sprintf("(cannot read the log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if off > 0 && len(lines) > 1 {
		lines = lines[1:] // the first may be cut
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ValidateKernel checks that path is a kernel Aetherium can boot directly (Firecracker and QEMU's -kernel with a
// PVH entry both take an uncompressed x86-64 vmlinux) and returns its release from the "Linux version" banner.
func ValidateKernel(path string) (release string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("kernel: %w", err)
	}
	defer f.Close()
	return validateKernel(f, path)
}

// validateKernel checks the open file f, calling it path in errors.
func validateKernel(f *os.File, path string) (release string, err error) {
	const need = "an uncompressed x86-64 vmlinux is needed (the file named vmlinux at the top of a kernel build tree)"
	ef, err := elf.NewFile(f)
	if err != nil {
		// The x86 boot protocol puts "HdrS" at 0x202 of a bzImage.
		var magic [4]byte
		if _, rerr := f.ReadAt(magic[:], 0x202); rerr == nil && string(magic[:]) == "HdrS" {
			return "", fmt.Errorf("kernel %s is a bzImage (compressed boot image): %s; extract one with the kernel's scripts/extract-vmlinux or build it", path, need)
		}
		return "", fmt.Errorf("kernel %s is not an ELF file (%v): %s", path, err, need)
	}
	if ef.Class != elf.ELFCLASS64 || ef.Machine != elf.EM_X86_64 {
		return "", fmt.Errorf("kernel %s is a %s ELF file for %s: %s", path, ef.Class, ef.Machine, need)
	}
	if ef.Type != elf.ET_EXEC {
		return "", fmt.Errorf("kernel %s is an ELF file of type %s, not an executable: %s", path, ef.Type, need)
	}
	release, err = findKernelRelease(f)
	if err != nil {
		return "", fmt.Errorf("kernel %s: %w", path, err)
	}
	if release == "" {
		return "", fmt.Errorf("kernel %s is an x86-64 executable without a \"Linux version \" banner, so not a Linux kernel: %s", path, need)
	}
	return release, nil
}

// findKernelRelease scans r for the banner in chunks that overlap by more than a banner's length, so that one
// cut by a chunk boundary is found whole in the next chunk.
func findKernelRelease(r io.ReaderAt) (string, error) {
	const chunk, overlap = 1 << 20, 512
	buf := make([]byte, chunk+overlap)
	var off int64
	for {
		n, err := r.ReadAt(buf, off)
		if m := kernelBanner.FindSubmatch(buf[:n]); m != nil {
			return string(m[1]), nil
		}
		if errors.Is(err, io.EOF) || n < len(buf) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("read: %w", err)
		}
		off += chunk
	}
}

// KernelManifest describes one kernel in a KernelStore.
type KernelManifest struct {
	Name         string    `json:"name"`
	Version      string    `json:"version"`
	Release      string    `json:"release"` // e.g. 6.1.158, from the banner
	Size         int64     `json:"size"`
	SHA256       string    `json:"sha256"` // of the vmlinux
	Source       string    `json:"source"` // "build:<tarball>" or "import:<path>"
	SourceSHA256 string    `json:"source_sha256,omitempty"`
	ConfigSHA256 string    `json:"config_sha256,omitempty"`
	BuildKey     string    `json:"build_key,omitempty"`
	BuiltAt      time.Time `json:"built_at,omitzero"`
	BuildSeconds float64   `json:"build_seconds,omitempty"`
	InstalledAt  time.Time `json:"installed_at"`

	// Path is the absolute path of the vmlinux; filled in when read, not stored.
	Path string `json:"-"`
}

// Ref is "name@version".
func (m KernelManifest) Ref() string { return m.Name + "@" + m.Version }

// KernelStore is a directory of guest kernels, <name>/<version>/{vmlinux,manifest.json}, beside the template
// store (normally <data_dir>/kernels). Versions are content hashes (or build keys), so installing the same kernel
// twice is a no-op. Like Store it holds nothing but its path.
type KernelStore struct {
	dir string
	v   versionedDir[KernelManifest]
}

// NewKernelStore opens (creating if needed) a kernel store in dir.
func NewKernelStore(dir string) (*KernelStore, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("kernel store: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(abs, tmpDir), 0o755); err != nil {
		return nil, fmt.Errorf("kernel store: create %s: %w", abs, err)
	}
	return &KernelStore{dir: abs, v: versionedDir[KernelManifest]{
		dir: abs, label: "kernel store", payload: KernelFile,
		setPath: func(m *KernelManifest, p string) { m.Path = p },
		before:  func(a, b KernelManifest) bool { return a.InstalledAt.After(b.InstalledAt) },
		version: func(m KernelManifest) string { return m.Version },
		hint:    " (build one with `aetherium image kernel build` or import one)",
	}}, nil
}

// Dir is the store's directory.
func (s *KernelStore) Dir() string { return s.dir }

// InstallBuild installs a cached build as name@<build key>: a hard link to the cache when it is on the same
// filesystem, else a copy. installed is false when that version was already there.
func (s *KernelStore) InstallBuild(name string, b KernelBuild) (m KernelManifest, installed bool, err error) {
	if err := validName("name", name); err != nil {
		return KernelManifest{}, false, err
	}
	if err := validName("version", b.Key); err != nil {
		return KernelManifest{}, false, err
	}
	if m, err := s.read(name, b.Key); err == nil {
		return m, false, nil
	}
	stage, err := os.MkdirTemp(filepath.Join(s.dir, tmpDir), "install-")
	if err != nil {
		return KernelManifest{}, false, fmt.Errorf("kernel store: staging directory: %w", err)
	}
	defer os.RemoveAll(stage)
	dst := filepath.Join(stage, KernelFile)
	if err := os.Link(b.Path, dst); err != nil {
		if _, _, err := copyKernelFile(b.Path, dst, 0o444); err != nil {
			return KernelManifest{}, false, fmt.Errorf("kernel store: copy %s: %w", b.Path, err)
		}
	} else if err := os.Chmod(dst, 0o444); err != nil { // the cache's file is 0444 already; this is a guard
		return KernelManifest{}, false, fmt.Errorf("kernel store: %w", err)
	}
	return s.publish(stage, KernelManifest{
		Name: name, Version: b.Key, Release: b.Release, Size: b.Size, SHA256: b.SHA256,
		Source: "build:" + b.Source, SourceSHA256: b.SourceSHA256, ConfigSHA256: b.ConfigSHA256,
		BuildKey: b.Key, BuiltAt: b.BuiltAt, BuildSeconds: b.BuildSeconds,
	})
}

// Import validates a user's vmlinux and installs a copy as name@<first 20 hex of its sha256>. It copies rather
// than links so that later changes to the user's file (or its mode) cannot reach the store. installed is false
// when that version was already there.
func (s *KernelStore) Import(name, path string) (m KernelManifest, installed bool, err error) {
	if err := validName("name", name); err != nil {
		return KernelManifest{}, false, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return KernelManifest{}, false, fmt.Errorf("kernel import: %w", err)
	}
	stage, err := os.MkdirTemp(filepath.Join(s.dir, tmpDir), "import-")
	if err != nil {
		return KernelManifest{}, false, fmt.Errorf("kernel store: staging directory: %w", err)
	}
	defer os.RemoveAll(stage)
	dst := filepath.Join(stage, KernelFile)
	sum, size, err := copyKernelFile(abs, dst, 0o444)
	if err != nil {
		return KernelManifest{}, false, fmt.Errorf("kernel import: %w", err)
	}
	// Validate the copy: it is what gets installed, whatever happens to the original meanwhile.
	f, err := os.Open(dst)
	if err != nil {
		return KernelManifest{}, false, fmt.Errorf("kernel import: %w", err)
	}
	release, err := validateKernel(f, abs)
	_ = f.Close()
	if err != nil {
		return KernelManifest{}, false, fmt.Errorf("kernel import: %w", err)
	}
	version := sum[:kernelKeyLen]
	if m, err := s.read(name, version); err == nil {
		return m, false, nil
	}
	return s.publish(stage, KernelManifest{
		Name: name, Version: version, Release: release, Size: size, SHA256: sum,
		Source: "import:" + abs, SourceSHA256: sum,
	})
}

// publish writes the manifest into stage (which holds the vmlinux) and renames it into place in one step, so
// that readers see a whole version or none.
func (s *KernelStore) publish(stage string, m KernelManifest) (KernelManifest, bool, error) {
	m.InstalledAt = time.Now().UTC()
	// MkdirTemp made stage 0700; VMMs that run as another user (Firecracker's jailer) must read the kernel.
	if err := os.Chmod(stage, 0o755); err != nil {
		return KernelManifest{}, false, fmt.Errorf("kernel store: %w", err)
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return KernelManifest{}, false, fmt.Errorf("kernel store: encode manifest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(stage, ManifestFile), append(mb, '\n'), 0o444); err != nil {
		return KernelManifest{}, false, fmt.Errorf("kernel store: write manifest: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(s.dir, m.Name), 0o755); err != nil {
		return KernelManifest{}, false, fmt.Errorf("kernel store: %w", err)
	}
	final := filepath.Join(s.dir, m.Name, m.Version)
	if err := os.Rename(stage, final); err != nil {
		// A concurrent install of the same content got there first.
		if errors.Is(err, fs.ErrExist) || errors.Is(err, unix.ENOTEMPTY) {
			if other, gerr := s.read(m.Name, m.Version); gerr == nil && other.SHA256 == m.SHA256 {
				return other, false, nil
			}
		}
		return KernelManifest{}, false, fmt.Errorf("kernel store: install %s: %w", m.Ref(), err)
	}
	m.Path = filepath.Join(final, KernelFile)
	return m, true, nil
}

// List returns every kernel, sorted by name and then newest first.
func (s *KernelStore) List() ([]KernelManifest, error) { return s.v.list() }

func (s *KernelStore) read(name, version string) (KernelManifest, error) {
	return s.v.read(name, version)
}

// Get returns the kernel named by ref ("name@version", or "name" for its newest).
func (s *KernelStore) Get(ref string) (KernelManifest, error) { return s.v.get(ref) }

// Remove deletes one version ("name@version" is required, so that a typo cannot remove every version). VMs already
// booted keep their open file.
func (s *KernelStore) Remove(ref string) error { return s.v.remove(ref) }

func kernelFileSHA256(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// copyKernelFile copies src to a new file dst with mode, fsynced, and returns the content's sha256 and size.
func copyKernelFile(src, dst string, mode fs.FileMode) (string, int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(dst, mode) // the umask may have narrowed it
	}
	if err != nil {
		_ = os.Remove(dst)
		return "", 0, fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// writeKernelJSON writes v to path through a temporary file and a rename, so that readers never see half of it.
func writeKernelJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o444)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

func syncKernelDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
