//go:build linux

package tools

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// ErrChecksum is returned (wrapped) when a download does not match the checksum its source published: it is not
// used, and not kept.
var ErrChecksum = errors.New("checksum mismatch")

// maxDownload bounds one download, so that a misbehaving server cannot fill the cache's disk.
const maxDownload = 4 << 30

// Checksum is the expected digest of a download.
type Checksum struct {
	Algo string `json:"algo"` // "sha256" or "sha512"
	Hex  string `json:"hex"`
}

func (c Checksum) String() string { return c.Algo + ":" + c.Hex }

func (c Checksum) newHash() (hash.Hash, error) {
	switch c.Algo {
	case "sha256":
		return sha256.New(), nil
	case "sha512":
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("unsupported checksum algorithm %q", c.Algo)
}

func (c Checksum) valid() bool {
	h, err := c.newHash()
	if err != nil {
		return false
	}
	b, err := hex.DecodeString(c.Hex)
	return err == nil && len(b) == h.Size() && strings.ToLower(c.Hex) == c.Hex
}

// parseIntegrity reads an npm/SRI integrity string ("sha512-<base64>", possibly several separated by spaces) and
// returns its sha512; weaker algorithms are not accepted.
func parseIntegrity(s string) (Checksum, error) {
	for f := range strings.FieldsSeq(s) {
		algo, b64, ok := strings.Cut(f, "-")
		if !ok || algo != "sha512" {
			continue
		}
		b64, _, _ = strings.Cut(b64, "?") // SRI options
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(raw) != sha512.Size {
			return Checksum{}, fmt.Errorf("malformed sha512 integrity %q", f)
		}
		return Checksum{Algo: "sha512", Hex: hex.EncodeToString(raw)}, nil
	}
	return Checksum{}, fmt.Errorf("no sha512 integrity in %q (the registry must publish one)", s)
}

// cache is a directory of downloads named by their checksum, so that a second build or VM that needs the same
// file does not download it again. A file is only ever put there, by rename, after its checksum matched, and it
// is checked again before each use.
type cache struct {
	dir    string
	client *http.Client
	// downloads counts the files fetched from the network (tests read it).
	downloads func()
}

func (c *cache) blobPath(sum Checksum) string {
	return filepath.Join(c.dir, "blobs", sum.Algo+"-"+sum.Hex)
}

// fetched is a verified file in the cache.
type fetched struct {
	Path       string
	Size       int64
	Downloaded bool // false: it was in the cache already
}

// fetch returns the cached file with checksum sum, downloading it from url when it is not cached (or when the
// cached copy no longer matches). label names it in progress lines and errors.
func (c *cache) fetch(ctx context.Context, url string, sum Checksum, label string, progress func(string)) (fetched, error) {
	if !sum.valid() {
		return fetched{}, fmt.Errorf("%s: invalid checksum %s", label, sum)
	}
	p := c.blobPath(sum)
	if n, err := verifyFile(p, sum); err == nil {
		return fetched{Path: p, Size: n}, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		// Corrupted on disk (or tampered with): never used; fetched again below.
		progress(fmt.Sprintf("cached %s is damaged (%v): downloading it again", label, err))
		if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return fetched{}, fmt.Errorf("%s: remove damaged cache file: %w", label, rerr)
		}
	}
	for _, d := range []string{filepath.Dir(p), filepath.Join(c.dir, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fetched{}, fmt.Errorf("tool cache: %w", err)
		}
	}
	n, err := c.download(ctx, url, sum, p, label, progress)
	if err != nil {
		return fetched{}, err
	}
	return fetched{Path: p, Size: n, Downloaded: true}, nil
}

// download streams url into a private temporary file, hashing as it goes, and renames it to dst only when the
// checksum matches: a cut or wrong download never appears under a checksum's name.
func (c *cache) download(ctx context.Context, url string, sum Checksum, dst, label string, progress func(string)) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", label, err)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("download %s from %s: %w", label, url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("download %s from %s: %s", label, url, resp.Status)
	}
	if resp.ContentLength > maxDownload {
		return 0, fmt.Errorf("download %s from %s: %d bytes is more than the %d allowed", label, url, resp.ContentLength, int64(maxDownload))
	}
	if resp.ContentLength > 0 {
		progress(fmt.Sprintf("downloading %s (%s)", label, megabytes(resp.ContentLength)))
	} else {
		progress("downloading " + label)
	}
	var suffix [8]byte
	_, _ = rand.Read(suffix[:])
	tmp := filepath.Join(c.dir, "tmp", hex.EncodeToString(suffix[:])+".part")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, fmt.Errorf("tool cache: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			f.Close()
			_ = os.Remove(tmp)
		}
	}()
	h, err := sum.newHash()
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(resp.Body, maxDownload+1))
	if err != nil {
		return 0, fmt.Errorf("download %s from %s: %w", label, url, err)
	}
	if n > maxDownload {
		return 0, fmt.Errorf("download %s from %s: more than the %d bytes allowed", label, url, int64(maxDownload))
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return 0, fmt.Errorf("download %s from %s: got %d of %d bytes", label, url, n, resp.ContentLength)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum.Hex {
		return 0, fmt.Errorf("%w: %s from %s has %s %s, its source says %s: not using it (a damaged mirror or "+
			"proxy, or a changed file; retry, and if it persists report it)", ErrChecksum, label, url, sum.Algo, got, sum.Hex)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("tool cache: %w", err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("tool cache: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return 0, fmt.Errorf("tool cache: %w", err)
	}
	committed = true
	if c.downloads != nil {
		c.downloads()
	}
	return n, nil
}

// verifyFile hashes the file at p and compares; fs.ErrNotExist when there is none.
func verifyFile(p string, sum Checksum) (int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	h, err := sum.newHash()
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum.Hex {
		return 0, fmt.Errorf("%w: %s is %s", ErrChecksum, p, got)
	}
	return n, nil
}

func megabytes(n int64) string {
	if n < 1e6 {
		return fmt.Sprintf("%d kB", (n+500)/1000)
	}
	if n < 10<<20 {
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	}
	return fmt.Sprintf("%d MB", (n+500_000)/1_000_000)
}
