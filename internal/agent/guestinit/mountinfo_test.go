package guestinit

import (
	"errors"
	"strings"
	"testing"
)

const sampleMountInfo = `22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334524k,nr_inodes=3083631,mode=755
26 24 0:24 / /dev/pts rw,relatime shared:3 master:1 - devpts devpts rw,mode=600,ptmxmode=000
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
28 27 0:25 /sub /mnt/with\040space\134x ro,nosuid - tmpfs my\040src ro,size=4k
607 29 0:4 net:[4026532182] /run/netns/x rw shared:250 - nsfs nsfs rw
`

func TestParseMountInfo(t *testing.T) {
	mounts, err := ParseMountInfo(strings.NewReader(sampleMountInfo + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 6 {
		t.Fatalf("got %d mounts", len(mounts))
	}
	want := Mount{ID: 26, ParentID: 24, Root: "/", MountPoint: "/dev/pts", Options: "rw,relatime", FSType: "devpts",
		Source: "devpts", SuperOpts: "rw,mode=600,ptmxmode=000"}
	if mounts[2] != want {
		t.Errorf("optional fields line: got %+v, want %+v", mounts[2], want)
	}
	want = Mount{ID: 28, ParentID: 27, Root: "/sub", MountPoint: `/mnt/with space\x`, Options: "ro,nosuid", FSType: "tmpfs",
		Source: "my src", SuperOpts: "ro,size=4k"}
	if mounts[4] != want {
		t.Errorf("escaped line: got %+v, want %+v", mounts[4], want)
	}
	if mounts[5].Root != "net:[4026532182]" || mounts[5].MountPoint != "/run/netns/x" {
		t.Errorf("namespace file line: got %+v", mounts[5])
	}
	set := mountPoints(mounts)
	for _, p := range []string{"/proc", "/dev", "/dev/pts", "/", `/mnt/with space\x`} {
		if !set[p] {
			t.Errorf("%s not in mount points", p)
		}
	}
	if set["/sys"] {
		t.Error("/sys is not mounted in the sample")
	}
}

func TestParseMountInfoErrors(t *testing.T) {
	for _, in := range []string{
		"22 27 0:21 / /proc rw,relatime proc proc rw\n", // no separator
		"x 27 0:21 / /proc rw - proc proc rw\n",
		"22 y 0:21 / /proc rw - proc proc rw\n",
		"22 27 0:21 / relative rw - proc proc rw\n",
		"22 27 0:21 / /proc rw -\n",
		"22 27\n",
	} {
		if _, err := ParseMountInfo(strings.NewReader(in)); !errors.Is(err, ErrBadMountInfo) {
			t.Errorf("%q: got %v, want ErrBadMountInfo", in, err)
		}
	}
	if _, err := ParseMountInfo(strings.NewReader(strings.Repeat("a", maxMountInfoLine+1))); !errors.Is(err, ErrBadMountInfo) {
		t.Errorf("overlong line: got %v", err)
	}
}

func TestUnescapeOctal(t *testing.T) {
	for in, want := range map[string]string{
		`plain`:         "plain",
		`a\040b`:        "a b",
		`tab\011nl\012`: "tab\tnl\n",
		`back\134`:      `back\`,
		`short\04`:      `short\04`,
		`high\777`:      `high\777`, // not a byte: kept
		`bad\08x`:       `bad\08x`,
	} {
		if got := unescapeOctal(in); got != want {
			t.Errorf("unescapeOctal(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzParseMountInfo: arbitrary input never panics, and every mount it accepts has absolute paths and a
// filesystem type.
func FuzzParseMountInfo(f *testing.F) {
	f.Add(sampleMountInfo)
	f.Add("1 2 3 / / - x y\n")
	f.Add(`1 2 3 /\0 /\777 - \1 \\` + "\n")
	f.Fuzz(func(t *testing.T, in string) {
		mounts, err := ParseMountInfo(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, m := range mounts {
			if !strings.HasPrefix(m.MountPoint, "/") {
				t.Fatalf("accepted relative path: %+v", m)
			}
		}
	})
}
