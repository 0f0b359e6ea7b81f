package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
)

// versionedDir is the layout the template and kernel stores share: <dir>/<name>/<version>/ holding the payload
// (rootfs.ext4, vmlinux) and manifest.json. A version appears whole by a rename out of <dir>/.tmp and goes away by
// a rename into it, so readers never see half of one; a directory without a readable manifest is not a version.
type versionedDir[M any] struct {
	dir     string
	label   string // starts every error: "image store", "kernel store"
	payload string // the file each version holds
	// setPath fills the manifest's Path (not stored) with the payload's absolute path.
	setPath func(m *M, path string)
	// before orders the versions of a name, newest first.
	before func(a, b M) bool
	// version of a manifest, for the tie-break and for errors.
	version func(M) string
	// hint is added to the error of a name that has no version.
	hint string
}

// list returns every version of every name, by name and then newest first.
func (v versionedDir[M]) list() ([]M, error) {
	names, err := os.ReadDir(v.dir)
	if err != nil {
		return nil, fmt.Errorf("%s: list: %w", v.label, err)
	}
	var out []M
	for _, n := range names {
		if !n.IsDir() || n.Name() == tmpDir {
			continue
		}
		ms, err := v.versions(n.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, ms...)
	}
	return out, nil
}

// versions returns the complete versions of name, newest first.
func (v versionedDir[M]) versions(name string) ([]M, error) {
	entries, err := os.ReadDir(filepath.Join(v.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("%s: list %s: %w", v.label, name, err)
	}
	var out []M
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if m, err := v.read(name, e.Name()); err == nil {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if v.before(out[i], out[j]) || v.before(out[j], out[i]) {
			return v.before(out[i], out[j])
		}
		return v.version(out[i]) > v.version(out[j])
	})
	return out, nil
}

// read returns name@version; ErrNotFound (wrapped) when there is no such version.
func (v versionedDir[M]) read(name, version string) (M, error) {
	var m M
	dir := filepath.Join(v.dir, name, version)
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if errors.Is(err, fs.ErrNotExist) {
		return m, fmt.Errorf("%s: %s@%s: %w", v.label, name, version, ErrNotFound)
	} else if err != nil {
		return m, fmt.Errorf("%s: read manifest of %s@%s: %w", v.label, name, version, err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: decode manifest of %s@%s: %w", v.label, name, version, err)
	}
	v.setPath(&m, filepath.Join(dir, v.payload))
	return m, nil
}

// get returns the version named by ref ("name@version", or "name" for its newest).
func (v versionedDir[M]) get(ref string) (M, error) {
	var zero M
	name, version, err := ParseRef(ref)
	if err != nil {
		return zero, err
	}
	if version != "" {
		return v.read(name, version)
	}
	ms, err := v.versions(name)
	if err != nil {
		return zero, err
	}
	if len(ms) == 0 {
		return zero, fmt.Errorf("%s: %s%s: %w", v.label, name, v.hint, ErrNotFound)
	}
	return ms[0], nil
}

// remove deletes one version ("name@version" is required, so that a typo cannot remove every version), renaming
// it into .tmp first. Processes that have its payload open (booted VMs) keep it.
func (v versionedDir[M]) remove(ref string) error {
	name, version, err := ParseRef(ref)
	if err != nil {
		return err
	}
	if version == "" {
		return fmt.Errorf("%s: remove %s: give a version (name@version)", v.label, name)
	}
	if _, err := v.read(name, version); err != nil {
		return err
	}
	trash, err := os.MkdirTemp(filepath.Join(v.dir, tmpDir), "rm-")
	if err != nil {
		return fmt.Errorf("%s: remove %s: %w", v.label, ref, err)
	}
	defer os.RemoveAll(trash)
	if err := os.Rename(filepath.Join(v.dir, name, version), filepath.Join(trash, "v")); err != nil {
		return fmt.Errorf("%s: remove %s: %w", v.label, ref, err)
	}
	// Drop the name's directory once its last version is gone; fails harmlessly when others remain.
	_ = os.Remove(filepath.Join(v.dir, name))
	return nil
}
