package server

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Where the guest's user database is by default. Names are resolved by reading these files (no cgo, no NSS): a
// guest image has local users only.
const (
	defaultPasswdFile = "/etc/passwd"
	defaultGroupFile  = "/etc/group"
)

// passwdEntry is one line of /etc/passwd.
type passwdEntry struct {
	name string
	uid  uint32
	gid  uint32
	home string
}

// groupEntry is one line of /etc/group.
type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// maxDBLine bounds a line of /etc/passwd or /etc/group (a group with many members can be long).
const maxDBLine = 1 << 20

// parsePasswd reads /etc/passwd's format (name:password:uid:gid:gecos:home:shell). Like libc, it skips lines it
// cannot parse (comments, NIS "+" lines, garbage) instead of failing, so that one bad line does not lock every user out.
func parsePasswd(r io.Reader) ([]passwdEntry, error) {
	var out []passwdEntry
	err := scanLines(r, func(line string) {
		f := strings.Split(line, ":")
		if len(f) < 7 || f[0] == "" {
			return
		}
		uid, err1 := parseID(f[2])
		gid, err2 := parseID(f[3])
		if err1 != nil || err2 != nil {
			return
		}
		out = append(out, passwdEntry{name: f[0], uid: uid, gid: gid, home: f[5]})
	})
	return out, err
}

// parseGroup reads /etc/group's format (name:password:gid:member,member...), skipping lines it cannot parse.
func parseGroup(r io.Reader) ([]groupEntry, error) {
	var out []groupEntry
	err := scanLines(r, func(line string) {
		f := strings.Split(line, ":")
		if len(f) < 4 || f[0] == "" {
			return
		}
		gid, err := parseID(f[2])
		if err != nil {
			return
		}
		g := groupEntry{name: f[0], gid: gid}
		for _, m := range strings.Split(f[3], ",") {
			if m = strings.TrimSpace(m); m != "" {
				g.members = append(g.members, m)
			}
		}
		out = append(out, g)
	})
	return out, err
}

func scanLines(r io.Reader, fn func(string)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxDBLine)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		fn(line)
	}
	return sc.Err()
}

// parseID parses a uid or gid: decimal digits only, below 2^32-1 (which is "no id" to the kernel).
func parseID(s string) (uint32, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, fmt.Errorf("%q is out of range", s)
	}
	return uint32(n), nil
}

// credential is who a command runs as, resolved from a "user[:group]" spec.
type credential struct {
	uid    uint32
	gid    uint32
	groups []uint32 // supplementary groups
	name   string   // empty for a uid without an entry
	home   string
}

// errUnknownUser marks a name that is not in the user database (CodeUnknownUser); other errors are bad requests.
var errUnknownUser = errors.New("unknown user")

// resolveUser resolves spec ("name", "uid", "name:group", "uid:gid"...) against the passwd and group files.
// A numeric user without an entry runs with gid 0 and no supplementary groups, as Docker does; a name that is
// not there is an error wrapping errUnknownUser. Supplementary groups are the groups that list the user as a
// member.
func resolveUser(spec, passwdPath, groupPath string) (*credential, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" || (hasGroup && groupPart == "") || strings.ContainsAny(spec, "\x00\n") {
		return nil, fmt.Errorf("user %q: want name or uid, optionally :group", spec)
	}
	users, err := readDB(passwdPath, parsePasswd)
	if err != nil {
		return nil, err
	}
	var groups []groupEntry
	groupsLoaded := false
	loadGroups := func() error {
		if !groupsLoaded {
			groups, err = readDB(groupPath, parseGroup)
			groupsLoaded = true
		}
		return err
	}

	cred := &credential{home: "/"}
	if uid, err := parseID(userPart); err == nil {
		cred.uid = uid
		if i := slices.IndexFunc(users, func(u passwdEntry) bool { return u.uid == uid }); i >= 0 {
			cred.name, cred.gid, cred.home = users[i].name, users[i].gid, users[i].home
		}
	} else {
		i := slices.IndexFunc(users, func(u passwdEntry) bool { return u.name == userPart })
		if i < 0 {
			return nil, fmt.Errorf("%w: no user %q in %s", errUnknownUser, userPart, passwdPath)
		}
		cred.uid, cred.name, cred.gid, cred.home = users[i].uid, users[i].name, users[i].gid, users[i].home
	}
	if cred.home == "" {
		cred.home = "/"
	}
	if hasGroup {
		if gid, err := parseID(groupPart); err == nil {
			cred.gid = gid
		} else {
			if err := loadGroups(); err != nil {
				return nil, err
			}
			i := slices.IndexFunc(groups, func(g groupEntry) bool { return g.name == groupPart })
			if i < 0 {
				return nil, fmt.Errorf("%w: no group %q in %s", errUnknownUser, groupPart, groupPath)
			}
			cred.gid = groups[i].gid
		}
	}
	if cred.name != "" {
		if err := loadGroups(); err != nil {
			return nil, err
		}
		for _, g := range groups {
			if slices.Contains(g.members, cred.name) && !slices.Contains(cred.groups, g.gid) {
				cred.groups = append(cred.groups, g.gid)
			}
		}
	}
	if cred.groups == nil {
		cred.groups = []uint32{} // set no supplementary groups, rather than keep the agent's
	}
	return cred, nil
}

// readDB parses one of the files; a missing file is an empty database (a minimal image may have no /etc/group).
func readDB[T any](path string, parse func(io.Reader) ([]T, error)) ([]T, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	entries, err := parse(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return entries, nil
}
