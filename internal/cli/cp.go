package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/pkg/client"
)

// remoteRE recognises VM:/path. A VM reference is an id or a name (letters, digits, '.', '_', '-', starting with
// a letter or digit), so local paths such as ./a:b or /tmp/a:b never match.
var remoteRE = regexp.MustCompile(`^([a-zA-Z0-9][a-zA-Z0-9._-]*):(.*)$`)

// cpEnd is one end of a copy: a local path ("-" is stdin or stdout) or a file of a VM.
type cpEnd struct {
	vm   string // empty: local
	path string
}

func parseCpEnd(s string) cpEnd {
	if m := remoteRE.FindStringSubmatch(s); m != nil {
		return cpEnd{vm: m[1], path: m[2]}
	}
	return cpEnd{path: s}
}

func (a *app) vmCp() *cobra.Command {
	var (
		owner   string
		parents bool
		noClob  bool
	)
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy a file between this machine and a VM",
		Long: `Copy one file into a VM or out of one. The VM's end is written VM:/path, with the VM's id or name; the
other end is a local path, or - for stdin or stdout. The file streams (any size) and keeps its permission bits.
When the destination is a directory (or ends with /), the file keeps its name inside it. A file written in the VM
appears whole or not at all; a local file is written beside its destination and renamed when complete.

Directories are not copied: use tar, e.g.  tar c DIR | aetherium vm cp - VM:/tmp/dir.tar`,
		Example: "  aetherium vm cp ./build.tar.gz web:/tmp/\n  aetherium vm cp web:/var/log/app.log .\n  aetherium vm cp web:/etc/os-release -",
	}
	f := cmd.Flags()
	f.StringVar(&owner, "owner", "", "owner of a file written in the VM, `USER[:GROUP]` (default root)")
	f.BoolVarP(&parents, "parents", "p", false, "create missing parent directories in the VM")
	f.BoolVarP(&noClob, "no-clobber", "n", false, "do not replace an existing file in the VM")
	cpArgs := func(cmd *cobra.Command, args []string) error {
		if len(args) != 2 {
			return errors.New("want SRC and DST: vm cp SRC DST, one of them VM:/path")
		}
		src, dst := parseCpEnd(args[0]), parseCpEnd(args[1])
		switch {
		case src.vm != "" && dst.vm != "":
			return errors.New("copy between two VMs is not supported: copy through a local file")
		case src.vm == "" && dst.vm == "":
			return errors.New("one of SRC and DST must be in a VM, as VM:/path")
		case src.vm != "" && !strings.HasPrefix(src.path, "/"), dst.vm != "" && !strings.HasPrefix(dst.path, "/"):
			return errors.New("the VM's path must be absolute, as VM:/path")
		case src.path == "" || dst.path == "":
			return errors.New("empty path")
		}
		return nil
	}
	return a.leaf(cmd, cpArgs, exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		src, dst := parseCpEnd(args[0]), parseCpEnd(args[1])
		if dst.vm != "" {
			return a.cpUp(ctx, c, src.path, dst, client.UploadOptions{Owner: owner, MkdirParents: parents, NoOverwrite: noClob})
		}
		return a.cpDown(ctx, c, src, dst.path)
	})
}

// cpUp copies a local file (or stdin) into a VM.
func (a *app) cpUp(ctx context.Context, c *client.Client, local string, dst cpEnd, opts client.UploadOptions) error {
	id, _, err := resolveVM(ctx, c, dst.vm)
	if err != nil {
		return err
	}
	var (
		r    io.Reader = a.streams.In
		name           = "stdin"
	)
	if local != "-" {
		f, err := os.Open(local)
		if err != nil {
			return &userError{msg: err.Error()}
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return &userError{msg: fmt.Sprintf("%s is a directory; vm cp copies one file (for a tree: tar c %s | %s vm cp - %s:/tmp/x.tar)",
				local, local, a.prog, dst.vm)}
		}
		if !fi.Mode().IsRegular() {
			return &userError{msg: local + " is not a regular file"}
		}
		r, name = f, filepath.Base(local)
		opts.Size, opts.Mode = fi.Size(), fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
	}
	target := dst.path
	if strings.HasSuffix(target, "/") {
		if local == "-" {
			return usagef("stdin has no name: give the file's path in the VM, not a directory")
		}
		target = path.Join(target, name)
	} else if info, err := c.Stat(ctx, id, target); err == nil && info.Type == client.FileTypeDirectory && local != "-" {
		target = path.Join(target, name)
	}
	p := a.newProgress(name, opts.Size)
	info, err := c.Upload(ctx, id, target, p.reader(r), opts)
	p.done()
	if err != nil {
		return err
	}
	if a.jsonOut {
		return printJSON(a.streams.Out, info)
	}
	return nil
}

// cpDown copies a file of a VM to a local path (or stdout).
func (a *app) cpDown(ctx context.Context, c *client.Client, src cpEnd, local string) error {
	id, _, err := resolveVM(ctx, c, src.vm)
	if err != nil {
		return err
	}
	d, err := c.Download(ctx, id, src.path)
	if err != nil {
		return err
	}
	defer d.Close()
	name := path.Base(src.path)
	p := a.newProgress(name, d.Size)
	defer p.done()
	if local == "-" {
		if _, err := io.Copy(a.streams.Out, p.reader(d)); err != nil {
			return fmt.Errorf("download %s: %w", src.path, err)
		}
		return nil
	}
	target := local
	if fi, err := os.Stat(local); (err == nil && fi.IsDir()) || strings.HasSuffix(local, string(os.PathSeparator)) {
		target = filepath.Join(local, name)
	}
	// Written beside the target and renamed when complete, so the target never holds a partial file.
	tmp, err := os.CreateTemp(filepath.Dir(target), "."+filepath.Base(target)+".aetherium-*")
	if err != nil {
		return &userError{msg: err.Error()}
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	n, err := io.Copy(tmp, p.reader(d))
	if err != nil {
		return fmt.Errorf("download %s: %w", src.path, err)
	}
	if d.Size >= 0 && n != d.Size {
		return fmt.Errorf("download %s: got %d bytes of %d", src.path, n, d.Size)
	}
	if d.Mode != 0 {
		if err := tmp.Chmod(d.Mode); err != nil {
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if !d.ModTime.IsZero() {
		_ = os.Chtimes(tmp.Name(), d.ModTime, d.ModTime)
	}
	if err := os.Rename(tmp.Name(), target); err != nil {
		return &userError{msg: err.Error()}
	}
	ok = true
	return nil
}

// progress shows a transfer on stderr when it is a terminal: "name  12.0 MiB / 64.0 MiB  18%  95.1 MB/s".
type progress struct {
	a     *app
	name  string
	total int64
	start time.Time

	mu   sync.Mutex
	n    int64
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

func (a *app) newProgress(name string, total int64) *progress {
	p := &progress{a: a, name: name, total: total, start: time.Now(), stop: make(chan struct{})}
	if !a.isTTY() {
		return p
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.draw()
			}
		}
	}()
	return p
}

func (p *progress) draw() {
	p.mu.Lock()
	n := p.n
	p.mu.Unlock()
	rate := float64(n) / max(time.Since(p.start).Seconds(), 1e-3) / 1e6
	line := fmt.Sprintf("%s  %s", p.name, fmtBytes(n))
	if p.total > 0 {
		line += fmt.Sprintf(" / %s  %d%%", fmtBytes(p.total), n*100/p.total)
	}
	fmt.Fprintf(p.a.streams.ErrOut, "\r\x1b[K%s  %.1f MB/s", line, rate)
}

func (p *progress) reader(r io.Reader) io.Reader { return &countingReader{r: r, p: p} }

// done stops the display and erases its line.
func (p *progress) done() {
	p.once.Do(func() {
		close(p.stop)
		p.wg.Wait()
		if p.a.isTTY() {
			fmt.Fprint(p.a.streams.ErrOut, "\r\x1b[K")
		}
	})
}

type countingReader struct {
	r io.Reader
	p *progress
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.p.mu.Lock()
	c.p.n += int64(n)
	c.p.mu.Unlock()
	return n, err
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
