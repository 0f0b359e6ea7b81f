package guestinit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Mount is one line of /proc/self/mountinfo (see proc(5)).
type Mount struct {
	ID       int
	ParentID int
	// Root is what of the filesystem is mounted (a path in it, usually); MountPoint is where, relative to the
	// process's root.
	Root       string
	MountPoint string
	Options    string // per-mount options (rw, nosuid, ...)
	FSType     string
	Source     string
	SuperOpts  string // per-superblock options (mode=755, ...)
}

// maxMountInfoLine bounds one line, so a corrupt file cannot make the parser buffer without limit. Real lines
// are far shorter: each path is at most PATH_MAX (4096) bytes, escaped at most 4x.
const maxMountInfoLine = 64 << 10

// ErrBadMountInfo wraps every parse failure of ParseMountInfo.
var ErrBadMountInfo = errors.New("malformed mountinfo")

// ParseMountInfo parses the format of /proc/<pid>/mountinfo:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//	(1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)   (10)         (11)
//
// Fields 7 (optional fields) end with a lone "-". Paths escape space, tab, newline and backslash as octal
// (\040, \011, \012, \134); they are unescaped here.
func ParseMountInfo(r io.Reader) ([]Mount, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxMountInfoLine)
	var mounts []Mount
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			continue
		}
		m, err := parseMountInfoLine(text)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrBadMountInfo, line, err)
		}
		mounts = append(mounts, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadMountInfo, err)
	}
	return mounts, nil
}

func parseMountInfoLine(line string) (Mount, error) {
	fields := strings.Fields(line)
	sep := -1
	for i := 6; i < len(fields); i++ {
		if fields[i] == "-" {
			sep = i
			break
		}
	}
	if len(fields) < 7 || sep < 0 || len(fields) < sep+3 {
		return Mount{}, fmt.Errorf("too few fields in %q", line)
	}
	id, err := strconv.Atoi(fields[0])
	if err != nil {
		return Mount{}, fmt.Errorf("mount id %q: %w", fields[0], err)
	}
	parent, err := strconv.Atoi(fields[1])
	if err != nil {
		return Mount{}, fmt.Errorf("parent id %q: %w", fields[1], err)
	}
	m := Mount{ID: id, ParentID: parent, Options: fields[5], FSType: unescapeOctal(fields[sep+1]), Source: unescapeOctal(fields[sep+2])}
	// The root is usually a path, but not always (a bind-mounted namespace file has "net:[4026532182]").
	m.Root = unescapeOctal(fields[3])
	if m.MountPoint, err = unescapePath(fields[4]); err != nil {
		return Mount{}, err
	}
	if len(fields) > sep+3 {
		m.SuperOpts = fields[sep+3]
	}
	return m, nil
}

func unescapePath(s string) (string, error) {
	p := unescapeOctal(s)
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("path %q is not absolute", s)
	}
	return p, nil
}

// unescapeOctal undoes the kernel's \ooo escapes; anything else is kept as it is.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] >= '0' && s[i+1] <= '3' && isOctal(s[i+2]) && isOctal(s[i+3]) {
			v := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			b.WriteByte(v)
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// mountPoints returns the set of mount points in mounts.
func mountPoints(mounts []Mount) map[string]bool {
	set := make(map[string]bool, len(mounts))
	for _, m := range mounts {
		set[m.MountPoint] = true
	}
	return set
}
