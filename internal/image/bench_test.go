//go:build linux

package image

import (
	"context"
	"path/filepath"
	"testing"
)

// BenchmarkBuild measures a full template build of the busybox test image (export, unpack, mkfs, fsck, hash);
// each iteration removes its template so that the next one is not a reuse.
func BenchmarkBuild(b *testing.B) {
	requireDocker(b)
	s, err := NewStore(filepath.Join(b.TempDir(), "images"))
	if err != nil {
		b.Fatal(err)
	}
	bl := NewBuilder(s, engine, nil)
	ctx := context.Background()
	for b.Loop() {
		m, _, err := bl.Build(ctx, BuildOptions{FromDocker: testImage, Name: "bench", AgentBinary: agentBinary})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Remove(m.Ref()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReuse measures the no-op path: a build whose inputs match an existing version.
func BenchmarkReuse(b *testing.B) {
	requireDocker(b)
	s, err := NewStore(filepath.Join(b.TempDir(), "images"))
	if err != nil {
		b.Fatal(err)
	}
	bl := NewBuilder(s, engine, nil)
	ctx := context.Background()
	opts := BuildOptions{FromDocker: testImage, Name: "bench", AgentBinary: agentBinary}
	if _, _, err := bl.Build(ctx, opts); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, reused, err := bl.Build(ctx, opts); err != nil || !reused {
			b.Fatalf("reused=%v err=%v", reused, err)
		}
	}
}
