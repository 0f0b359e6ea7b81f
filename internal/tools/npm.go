//go:build linux

package tools

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// maxMetadata bounds an npm package document (the abbreviated form of the largest packages is a few MiB).
const maxMetadata = 64 << 20

// npmPackument is the part of an npm registry's package document ("packument") that resolution needs.
type npmPackument struct {
	Name     string                `json:"name"`
	DistTags map[string]string     `json:"dist-tags"`
	Versions map[string]npmVersion `json:"versions"`
}

type npmVersion struct {
	Version string `json:"version"`
	Dist    struct {
		Tarball   string `json:"tarball"`
		Integrity string `json:"integrity"`
	} `json:"dist"`
}

// npmPath is the registry path of a package: a scoped name's slash is escaped, as npm does.
func npmPath(name string) string { return strings.Replace(name, "/", "%2f", 1) }

// npmMetadata fetches a package's document. Each successful fetch is kept in the cache, and used (with a
// progress line saying so) when the registry cannot be reached: a host that resolved a tool once can install
// it again offline, as its tarball is cached too.
func (in *Installer) npmMetadata(ctx context.Context, pkg string, progress func(string)) (*npmPackument, error) {
	url := in.npmRegistry + "/" + npmPath(pkg)
	saved := filepath.Join(in.cache.dir, "npm", strings.ReplaceAll(npmPath(pkg), "%2f", "__")+".json")
	body, err := in.getJSON(ctx, url)
	if err != nil {
		old, rerr := os.ReadFile(saved)
		if rerr != nil {
			return nil, fmt.Errorf("npm registry: %w", err)
		}
		progress(fmt.Sprintf("npm registry unreachable (%v): using the package data of %s saved earlier", err, pkg))
		in.log.Warn("npm registry unreachable: using saved package data", "package", pkg, "err", err)
		body = old
	} else if err := writeFileAtomic(saved, body); err != nil {
		in.log.Warn("tool cache: save npm package data", "package", pkg, "err", err)
	}
	var doc npmPackument
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("npm registry: package %s: decode %s: %w", pkg, url, err)
	}
	if len(doc.Versions) == 0 {
		return nil, fmt.Errorf("npm registry: package %s at %s lists no versions", pkg, url)
	}
	return &doc, nil
}

// errNotFound marks a 404 from a registry.
var errNotFound = errors.New("not found")

func (in *Installer) getJSON(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	// The abbreviated document ("corgi") has everything installing needs and is far smaller.
	req.Header.Set("Accept", "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8")
	resp, err := in.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("GET %s: %w", url, errNotFound)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxMetadata+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if len(b) > maxMetadata {
		return nil, fmt.Errorf("GET %s: larger than %d bytes", url, maxMetadata)
	}
	return b, nil
}

// resolveNPM picks the exact version of an npm tool for spec (already defaulted and de-aliased): a dist-tag, an
// exact version, or the newest release under a numeric prefix.
func (in *Installer) resolveNPM(ctx context.Context, t *Tool, spec string, progress func(string)) (Resolved, error) {
	doc, err := in.npmMetadata(ctx, t.Package, progress)
	if err != nil {
		return Resolved{}, fmt.Errorf("resolve %s: %w", t.Name, err)
	}
	version := ""
	if v, ok := doc.DistTags[spec]; ok {
		version = v
	} else if _, ok := doc.Versions[spec]; ok {
		version = spec
	} else if numericSpec(spec) {
		version = pickVersion(sortedKeys(doc.Versions), spec)
	}
	meta, ok := doc.Versions[version]
	if version == "" || !ok {
		var also []string
		for _, a := range sortedKeys(t.Aliases) {
			also = append(also, a+" ("+t.Aliases[a]+")")
		}
		also = append(also, sortedKeys(doc.DistTags)...)
		return Resolved{}, fmt.Errorf("%w: %s has no version %q (npm package %s); the newest are %s; also: %s, or a major version such as %q",
			ErrUnknownVersion, t.Name, spec, t.Package, strings.Join(newestFirst(sortedKeys(doc.Versions), 8), ", "),
			strings.Join(also, ", "), firstMajor(doc))
	}
	sum, err := parseIntegrity(meta.Dist.Integrity)
	if err != nil {
		return Resolved{}, fmt.Errorf("resolve %s %s: npm package %s: %w", t.Name, version, t.Package, err)
	}
	if !strings.HasPrefix(meta.Dist.Tarball, "http://") && !strings.HasPrefix(meta.Dist.Tarball, "https://") {
		return Resolved{}, fmt.Errorf("resolve %s %s: npm package %s has no tarball URL", t.Name, version, t.Package)
	}
	return Resolved{Name: t.Name, Kind: t.Kind, Version: version, URL: meta.Dist.Tarball, Checksum: sum}, nil
}

// firstMajor is the major version of the latest release, as an example for messages.
func firstMajor(doc *npmPackument) string {
	v := doc.DistTags["latest"]
	if s := parseSemver(v); s.ok {
		return fmt.Sprint(s.nums[0])
	}
	return "1"
}

// writeFileAtomic writes p through a temporary file and a rename, creating its directory.
func writeFileAtomic(p string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), p); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}
