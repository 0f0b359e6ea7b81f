//go:build linux

package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeBinary writes an executable that prints what a Firecracker release binary prints for --version.
func fakeBinary(t *testing.T, dir, name, version string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho \""+version+"\"\necho\necho 'Supported snapshot data format versions: v5.0.0'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDoctorFirecrackerHost: the Firecracker host checks judge the release (>= 1.1), the jailer (present, same
// release), cgroup v2, /dev/kvm and the uid Firecracker runs as, from fake binaries and host files.
func TestDoctorFirecrackerHost(t *testing.T) {
	dir := t.TempDir()
	withCgroup2 := filepath.Join(dir, "mounts-v2")
	noCgroup2 := filepath.Join(dir, "mounts-v1")
	passwd := filepath.Join(dir, "passwd")
	kvmFile := filepath.Join(dir, "kvm") // a regular file: opens, but is no KVM device
	for p, s := range map[string]string{
		withCgroup2: "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n",
		noCgroup2:   "proc /proc proc rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n",
		passwd:      "root:x:0:0:root:/root:/bin/sh\nalice:x:10000:10000::/home/alice:/bin/sh\n",
		kvmFile:     "",
	} {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fc17 := fakeBinary(t, dir, "firecracker", "Firecracker v1.7.0")
	fc10 := fakeBinary(t, dir, "firecracker-old", "Firecracker v1.0.0")
	jail17 := fakeBinary(t, dir, "jailer", "Jailer v1.7.0")
	jail16 := fakeBinary(t, dir, "jailer-1.6", "Jailer v1.6.0")
	garbage := fakeBinary(t, dir, "firecracker-garbage", "hello")
	renamed := filepath.Join(dir, "vmm")
	if err := os.Symlink(fakeBinary(t, dir, "vmm-real", "Firecracker v1.7.0"), renamed); err != nil {
		t.Fatal(err)
	}

	host := firecrackerHost{mounts: withCgroup2, kvm: kvmFile, passwd: passwd, euid: 0}
	for _, tc := range []struct {
		name string
		args []string
		host func(h *firecrackerHost)
		want map[string]CheckStatus
		says map[string]string
	}{
		{name: "good unjailed root host", args: []string{"--firecracker-bin", fc17},
			want: map[string]CheckStatus{"firecracker version": CheckOK, "jailer": CheckWarn, "cgroup v2": CheckOK,
				"kvm access": CheckOK, "firecracker uid": CheckWarn},
			says: map[string]string{"firecracker version": "v1.7.0", "firecracker uid": "root, unjailed"}},
		{name: "too old", args: []string{"--firecracker-bin", fc10},
			want: map[string]CheckStatus{"firecracker version": CheckFail},
			says: map[string]string{"firecracker version": "older than v1.1.0"}},
		{name: "no version", args: []string{"--firecracker-bin", garbage},
			want: map[string]CheckStatus{"firecracker version": CheckFail},
			says: map[string]string{"firecracker version": "no version"}},
		{name: "jailed, uid of an account, kvm not a device", args: []string{"--firecracker-bin", fc17, "--jailer-bin", jail17},
			want: map[string]CheckStatus{"jailer": CheckOK, "kvm access": CheckFail, "firecracker uid": CheckWarn},
			says: map[string]string{"kvm access": "not the KVM device", "firecracker uid": `"alice"`}},
		{name: "jailed with a free uid and the real /dev/kvm node", args: []string{"--firecracker-bin", fc17,
			"--jailer-bin", jail17, "--jailer-uid", "10123"},
			host: func(h *firecrackerHost) { h.kvm = "/dev/kvm" },
			want: map[string]CheckStatus{"firecracker uid": CheckOK},
			says: map[string]string{"firecracker uid": "uid 10123"}},
		{name: "netns", args: []string{"--firecracker-bin", fc17, "--jailer-bin", jail17, "--jailer-netns", "/proc/self/ns/net"},
			want: map[string]CheckStatus{"jailer netns": CheckOK}},
		{name: "netns that is no namespace", args: []string{"--firecracker-bin", fc17, "--jailer-bin", jail17,
			"--jailer-netns", passwd},
			want: map[string]CheckStatus{"jailer netns": CheckFail},
			says: map[string]string{"jailer netns": "not a namespace"}},
		{name: "jailer of another release", args: []string{"--firecracker-bin", fc17, "--jailer-bin", jail16},
			want: map[string]CheckStatus{"jailer": CheckFail},
			says: map[string]string{"jailer": "same release"}},
		{name: "binary name the jailer refuses", args: []string{"--firecracker-bin", renamed, "--jailer-bin", jail17},
			want: map[string]CheckStatus{"jailer": CheckFail},
			says: map[string]string{"jailer": "contains \"firecracker\""}},
		{name: "jailed by a non-root worker, no cgroup v2 with cgroups", args: []string{"--firecracker-bin", fc17,
			"--jailer-bin", jail17, "--jailer-cgroups", "cpu.max=100000"},
			host: func(h *firecrackerHost) { h.euid, h.mounts = 1000, noCgroup2 },
			want: map[string]CheckStatus{"cgroup v2": CheckFail, "firecracker uid": CheckFail},
			says: map[string]string{"firecracker uid": "needs root"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := host
			if tc.host != nil {
				tc.host(&h)
			}
			cfg := doctorConfig(t, append([]string{"--data-dir", dir, "--backend", "firecracker"}, tc.args...)...)
			checks := byName(firecrackerChecks(context.Background(), cfg, h))
			for name, want := range tc.want {
				c, ok := checks[name]
				if !ok {
					t.Fatalf("no %q check in %+v", name, checks)
				}
				if c.Status != want {
					t.Errorf("%s: %s (%s); want %s", name, c.Status, c.Detail, want)
				}
				if c.Status != CheckOK && c.Fix == "" {
					t.Errorf("%s is %s without a fix: %+v", name, c.Status, c)
				}
				if c.Status == CheckOK && c.Fix != "" {
					t.Errorf("%s is ok but says how to fix it: %+v", name, c)
				}
			}
			for name, s := range tc.says {
				if d := checks[name].Detail; !strings.Contains(d, s) {
					t.Errorf("%s detail %q does not say %q", name, d, s)
				}
			}
		})
	}
	// Another backend: no Firecracker checks.
	cfg := doctorConfig(t, "--data-dir", dir, "--backend", "docker", "--firecracker-bin", fc17)
	if c := firecrackerChecks(context.Background(), cfg, host); len(c) != 0 {
		t.Fatalf("checks for backend docker: %+v", c)
	}
}
