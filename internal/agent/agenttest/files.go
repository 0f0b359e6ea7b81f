package agenttest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/client"
)

// bigFileSize is the size of the file the suite uploads and downloads: far more than any buffer on the way.
const bigFileSize = 64 << 20

// guestDir makes a scratch directory in the guest, removed when the test ends.
func guestDir(t *testing.T, ctx context.Context, c *client.Client) string {
	t.Helper()
	dir := "/tmp/aetherium-agenttest-" + randHex(t)
	if _, err := c.Mkdir(ctx, agent.MkdirRequest{Path: dir}); err != nil {
		t.Fatalf("Mkdir %s: %v", dir, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Remove(ctx, dir, true)
	})
	return dir
}

// guestSHA256 is the guest's own digest of a file.
func guestSHA256(t *testing.T, ctx context.Context, c *client.Client, path string) string {
	t.Helper()
	res := mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"sha256sum", path}})
	f := strings.Fields(string(res.Stdout))
	if res.ExitCode != 0 || len(f) == 0 {
		t.Fatalf("sha256sum %s: exit %d %q %q", path, res.ExitCode, res.Stdout, res.Stderr)
	}
	return f[0]
}

func testFileTransfer(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	dir := guestDir(t, ctx, c)
	path := dir + "/a/b/big.bin"

	// Random content made as it is sent: the test holds no copy of it either.
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(mrand.NewChaCha8([32]byte{1, 2, 3}), bigFileSize), h)
	_, err := c.Upload(ctx, agent.UploadRequest{Path: path}, strings.NewReader("x"))
	wantCode(t, "upload into a missing directory", err, agent.CodeNotFound)
	info, err := c.Upload(ctx, agent.UploadRequest{Path: dir + "/a/./b/../b//big.bin", Mode: 0o640, Owner: "1234:5678", MkdirParents: true}, src)
	if err != nil {
		t.Fatalf("Upload: %v", err)
	}
	want := hex.EncodeToString(h.Sum(nil))
	if info.Path != path || info.Name != "big.bin" || info.Size != bigFileSize || info.Mode != 0o640 || info.UID != 1234 ||
		info.GID != 5678 || info.IsDir {
		t.Fatalf("uploaded file: %+v", info)
	}
	if got := guestSHA256(t, ctx, c, path); got != want {
		t.Fatalf("guest has sha256 %s, sent %s", got, want)
	}
	st, err := c.Stat(ctx, path)
	if err != nil || st.Size != bigFileSize || st.Mode != 0o640 || st.UID != 1234 || time.Since(st.ModTime) > time.Hour {
		t.Fatalf("Stat: %+v %v", st, err)
	}

	// Download: the metadata comes first, then exactly the content.
	f, err := c.OpenFile(ctx, path)
	if err != nil {
		t.Fatalf("OpenFile: %v", err)
	}
	if f.Info.Size != bigFileSize || f.Info.Mode != 0o640 {
		t.Fatalf("OpenFile info: %+v", f.Info)
	}
	dh := sha256.New()
	n, err := io.Copy(dh, f)
	_ = f.Close()
	if err != nil || n != bigFileSize || hex.EncodeToString(dh.Sum(nil)) != want {
		t.Fatalf("downloaded %d bytes (%v) with sha256 %x; want %d with %s", n, err, dh.Sum(nil), bigFileSize, want)
	}

	// Replacing a file; refusing to when asked not to.
	if _, err := c.Upload(ctx, agent.UploadRequest{Path: path}, strings.NewReader("small")); err != nil {
		t.Fatal(err)
	}
	var small bytes.Buffer
	if info, err := c.Download(ctx, path, &small); err != nil || small.String() != "small" || info.Size != 5 || info.Mode != 0o644 {
		t.Fatalf("after replacing: %+v %v %q", info, err, small.String())
	}
	_, err = c.Upload(ctx, agent.UploadRequest{Path: path, NoOverwrite: true}, strings.NewReader("other"))
	wantCode(t, "no overwrite", err, agent.CodeExists)
	if !errors.Is(err, fs.ErrExist) {
		t.Errorf("exists error %v is not fs.ErrExist", err)
	}
	if _, err := c.Upload(ctx, agent.UploadRequest{Path: dir + "/new.txt", NoOverwrite: true, Mode: 0o4755}, strings.NewReader("")); err != nil {
		t.Fatalf("no-overwrite upload of a new, empty file: %v", err)
	} else if st, _ := c.Stat(ctx, dir+"/new.txt"); st == nil || st.Size != 0 || st.Mode != fs.ModeSetuid|0o755 {
		t.Fatalf("new empty setuid file: %+v", st)
	}
	var empty bytes.Buffer
	if info, err := c.Download(ctx, dir+"/new.txt", &empty); err != nil || info.Size != 0 || empty.Len() != 0 {
		t.Fatalf("download of an empty file: %+v %v", info, err)
	}

	_, err = c.Upload(ctx, agent.UploadRequest{Path: dir + "/a"}, strings.NewReader("x"))
	wantCode(t, "upload over a directory", err, agent.CodeIsADirectory)
	_, err = c.Upload(ctx, agent.UploadRequest{Path: path + "/x", MkdirParents: true}, strings.NewReader("x"))
	wantCode(t, "upload under a file", err, agent.CodeNotADirectory)
	_, err = c.Upload(ctx, agent.UploadRequest{Path: dir + "/x", Owner: "aetherium-no-such-user"}, strings.NewReader("x"))
	wantCode(t, "unknown owner", err, agent.CodeUnknownUser)

	_, err = c.Download(ctx, dir, io.Discard)
	wantCode(t, "download a directory", err, agent.CodeIsADirectory)
	_, err = c.Download(ctx, dir+"/missing", io.Discard)
	wantCode(t, "download a missing file", err, agent.CodeNotFound)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("not-found error %v is not fs.ErrNotExist", err)
	}
	_, err = c.Download(ctx, "/dev/null", io.Discard)
	wantCode(t, "download a device", err, agent.CodeNotARegularFile)
}

// gateReader gives n bytes, then blocks until released, then fails.
type gateReader struct {
	n       int
	reached chan struct{}
	release chan struct{}
}

func (g *gateReader) Read(p []byte) (int, error) {
	if g.n > 0 {
		k := min(len(p), g.n)
		g.n -= k
		return k, nil
	}
	close(g.reached)
	<-g.release
	return 0, errors.New("source failed")
}

func testUploadIsAtomic(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	dir := guestDir(t, ctx, c)
	path := dir + "/f"
	if _, err := c.Upload(ctx, agent.UploadRequest{Path: path}, strings.NewReader("old")); err != nil {
		t.Fatal(err)
	}
	g := &gateReader{n: 3 << 20, reached: make(chan struct{}), release: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Upload(ctx, agent.UploadRequest{Path: path}, g)
		errc <- err
	}()
	select {
	case <-g.reached:
	case err := <-errc:
		t.Fatalf("upload ended early: %v", err)
	}
	// Mid-upload the path still holds the old content.
	var buf bytes.Buffer
	if _, err := c.Download(ctx, path, &buf); err != nil || buf.String() != "old" {
		t.Fatalf("mid-upload: %q %v", buf.String(), err)
	}
	close(g.release)
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "source failed") {
		t.Fatalf("failed upload returned %v", err)
	}
	buf.Reset()
	if _, err := c.Download(ctx, path, &buf); err != nil || buf.String() != "old" {
		t.Fatalf("after a failed upload: %q %v", buf.String(), err)
	}
	// A source cut short (an HTTP body shorter than its Content-Length reads as io.ErrUnexpectedEOF) is a failure,
	// not the end of the file.
	cut := io.MultiReader(strings.NewReader("partial"), iotest.ErrReader(io.ErrUnexpectedEOF))
	if _, err := c.Upload(ctx, agent.UploadRequest{Path: path}, cut); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("upload from a cut source returned %v, want io.ErrUnexpectedEOF", err)
	}
	buf.Reset()
	if _, err := c.Download(ctx, path, &buf); err != nil || buf.String() != "old" {
		t.Fatalf("after a cut upload: %q %v", buf.String(), err)
	}
	// The temporary file goes away (the agent notices the cancel a moment later).
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, err := c.ListDir(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) == 1 && entries[0].Name == "f" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leftovers after a failed upload: %+v", entries)
		}
		time.Sleep(10 * time.Millisecond) // polling the guest's state; there is no event to wait for
	}
}

func testFileOperations(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	dir := guestDir(t, ctx, c)

	_, err := c.Mkdir(ctx, agent.MkdirRequest{Path: dir + "/x/y"})
	wantCode(t, "mkdir without parents", err, agent.CodeNotFound)
	info, err := c.Mkdir(ctx, agent.MkdirRequest{Path: dir + "/x/y", Parents: true, Mode: 0o750, Owner: "nobody"})
	if err != nil || !info.IsDir || info.Mode != fs.ModeDir|0o750 || info.UID == 0 {
		t.Fatalf("mkdir -p: %+v %v", info, err)
	}
	if _, err := c.Mkdir(ctx, agent.MkdirRequest{Path: dir + "/x/y", Parents: true}); err != nil {
		t.Fatalf("mkdir -p of an existing directory: %v", err)
	}
	_, err = c.Mkdir(ctx, agent.MkdirRequest{Path: dir + "/x/y"})
	wantCode(t, "mkdir of an existing directory", err, agent.CodeExists)

	if _, err := c.Upload(ctx, agent.UploadRequest{Path: dir + "/x/file"}, strings.NewReader("12345")); err != nil {
		t.Fatal(err)
	}
	res := mustExec(t, ctx, c, agent.ExecRequest{Shell: "ln -s file link && ln -s /nonexistent dangling", WorkingDir: dir + "/x"})
	if res.ExitCode != 0 {
		t.Fatalf("ln: %q", res.Stderr)
	}
	entries, err := c.ListDir(ctx, dir+"/x/")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name)
	}
	if !slices.Equal(names, []string{"dangling", "file", "link", "y"}) {
		t.Fatalf("entries %q", names)
	}
	if e := entries[2]; e.LinkTarget != "file" || e.Mode&fs.ModeSymlink == 0 || e.Path != dir+"/x/link" {
		t.Errorf("link entry %+v", e)
	}
	if e := entries[0]; e.LinkTarget != "/nonexistent" {
		t.Errorf("dangling link entry %+v", e)
	}
	if e := entries[1]; e.Size != 5 || e.IsDir || !e.Mode.IsRegular() {
		t.Errorf("file entry %+v", e)
	}
	if e := entries[3]; !e.IsDir {
		t.Errorf("directory entry %+v", e)
	}
	if st, err := c.Stat(ctx, dir+"/x/link"); err != nil || st.LinkTarget != "file" {
		t.Errorf("Stat of a link: %+v %v", st, err)
	}
	_, err = c.ListDir(ctx, dir+"/x/file")
	wantCode(t, "list a file", err, agent.CodeNotADirectory)
	_, err = c.ListDir(ctx, dir+"/nope")
	wantCode(t, "list a missing directory", err, agent.CodeNotFound)

	wantCode(t, "remove a non-empty directory", c.Remove(ctx, dir+"/x", false), agent.CodeNotEmpty)
	wantCode(t, "remove a missing file", c.Remove(ctx, dir+"/nope", false), agent.CodeNotFound)
	if err := c.Remove(ctx, dir+"/x/link", false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(ctx, dir+"/x/file"); err != nil {
		t.Fatalf("removing a link removed its target: %v", err)
	}
	if err := c.Remove(ctx, dir+"/x", true); err != nil {
		t.Fatal(err)
	}
	_, err = c.Stat(ctx, dir+"/x")
	wantCode(t, "stat after remove", err, agent.CodeNotFound)

	// Paths are validated the same way everywhere.
	for _, p := range []string{"", "relative/path", "/tmp/a\x00b", "/" + strings.Repeat("a", 5000)} {
		_, err := c.Stat(ctx, p)
		wantCode(t, "stat "+p, err, agent.CodeInvalidPath)
		_, err = c.Upload(ctx, agent.UploadRequest{Path: p}, strings.NewReader("x"))
		wantCode(t, "upload "+p, err, agent.CodeInvalidPath)
		_, err = c.Mkdir(ctx, agent.MkdirRequest{Path: p})
		wantCode(t, "mkdir "+p, err, agent.CodeInvalidPath)
		wantCode(t, "remove "+p, c.Remove(ctx, p, true), agent.CodeInvalidPath)
		_, err = c.ListDir(ctx, p)
		wantCode(t, "list "+p, err, agent.CodeInvalidPath)
		_, err = c.OpenFile(ctx, p)
		wantCode(t, "download "+p, err, agent.CodeInvalidPath)
	}
	wantCode(t, "remove /", c.Remove(ctx, "/", true), agent.CodeInvalidPath)
	wantCode(t, "remove /..", c.Remove(ctx, "/tmp/../..", true), agent.CodeInvalidPath)
}
