package server

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const testPasswd = `root:x:0:0:root:/root:/bin/bash
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash
broken line
bob:x:1001:100::/home/bob:/bin/sh
nohome:x:1002:1002:::/bin/sh
+nis
badid:x:abc:1:::
`

const testGroup = `root:x:0:
users:x:100:alice
alice:x:1000:
docker:x:999:alice,bob
staff:x:50: bob , alice
bad:x:notanumber:alice
`

func writeDB(t *testing.T) (string, string) {
	t.Helper()
	dir := t.TempDir()
	p, g := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	if err := os.WriteFile(p, []byte(testPasswd), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(g, []byte(testGroup), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, g
}

func TestResolveUser(t *testing.T) {
	p, g := writeDB(t)
	for spec, want := range map[string]credential{
		"root":         {uid: 0, gid: 0, groups: []uint32{}, name: "root", home: "/root"},
		"alice":        {uid: 1000, gid: 1000, groups: []uint32{100, 999, 50}, name: "alice", home: "/home/alice"},
		"1000":         {uid: 1000, gid: 1000, groups: []uint32{100, 999, 50}, name: "alice", home: "/home/alice"},
		"alice:docker": {uid: 1000, gid: 999, groups: []uint32{100, 999, 50}, name: "alice", home: "/home/alice"},
		"bob:0":        {uid: 1001, gid: 0, groups: []uint32{999, 50}, name: "bob", home: "/home/bob"},
		"nohome":       {uid: 1002, gid: 1002, groups: []uint32{}, name: "nohome", home: "/"},
		"4321":         {uid: 4321, gid: 0, groups: []uint32{}, home: "/"},
		"4321:8765":    {uid: 4321, gid: 8765, groups: []uint32{}, home: "/"},
		"4321:staff":   {uid: 4321, gid: 50, groups: []uint32{}, home: "/"},
	} {
		got, err := resolveUser(spec, p, g)
		if err != nil {
			t.Errorf("%s: %v", spec, err)
			continue
		}
		if !reflect.DeepEqual(*got, want) {
			t.Errorf("%s: got %+v, want %+v", spec, *got, want)
		}
	}
	// A number too large for a uid is looked up as a name, and is not there either.
	for _, spec := range []string{"carol", "alice:wheel", "badid", "4294967295"} {
		if _, err := resolveUser(spec, p, g); !errors.Is(err, errUnknownUser) {
			t.Errorf("%s: got %v, want errUnknownUser", spec, err)
		}
	}
	for _, spec := range []string{"", ":0", "0:", "a\x00b"} {
		if _, err := resolveUser(spec, p, g); err == nil || errors.Is(err, errUnknownUser) {
			t.Errorf("%q: got %v, want a bad request", spec, err)
		}
	}
	// No database at all: numbers still work, names do not.
	if c, err := resolveUser("7:8", "/nonexistent/passwd", "/nonexistent/group"); err != nil || c.uid != 7 || c.gid != 8 {
		t.Errorf("without files: %+v %v", c, err)
	}
	if _, err := resolveUser("root", "/nonexistent/passwd", "/nonexistent/group"); !errors.Is(err, errUnknownUser) {
		t.Errorf("a name without files: %v", err)
	}
}

func TestParseID(t *testing.T) {
	for s, ok := range map[string]bool{"0": true, "65534": true, "4294967294": true, "4294967295": false, "-1": false,
		"+1": false, " 1": false, "": false, "1e3": false} {
		if _, err := parseID(s); (err == nil) != ok {
			t.Errorf("parseID(%q): %v", s, err)
		}
	}
}

// FuzzUserDB: the parsers never panic on any file, and every entry they return has a name.
func FuzzUserDB(f *testing.F) {
	f.Add(testPasswd, testGroup)
	f.Add("a:b:c", "::::")
	f.Add(strings.Repeat("x:", 100), "g:x:1:"+strings.Repeat("m,", 100))
	f.Fuzz(func(t *testing.T, passwd, group string) {
		users, err := parsePasswd(strings.NewReader(passwd))
		if err == nil {
			for _, u := range users {
				if u.name == "" {
					t.Fatalf("user without a name from %q", passwd)
				}
			}
		}
		groups, err := parseGroup(strings.NewReader(group))
		if err == nil {
			for _, g := range groups {
				if g.name == "" {
					t.Fatalf("group without a name from %q", group)
				}
				for _, m := range g.members {
					if m == "" || strings.Contains(m, ",") {
						t.Fatalf("bad member %q", m)
					}
				}
			}
		}
	})
}
