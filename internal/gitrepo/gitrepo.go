// Package gitrepo reads the repository URLs runs are given and the git names (refs, branches) they use. Every form a
// user may paste (https, ssh, scp-like, git://) names a host and a path; runs fetch them all over HTTPS from that
// host. What could reach the worker's own files or network in a surprising way is refused: local paths, file://,
// plain http, credentials in the URL, option-like values.
package gitrepo

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
)

// Repo is a repository on a host.
type Repo struct {
	Host string // lower case, without port
	Path string // "org/repo", without ".git" and slashes around
}

// Key is how grants and configuration name the repository: "host/org/repo".
func (r Repo) Key() string { return r.Host + "/" + r.Path }

// HTTPSURL is the repository's https URL.
func (r Repo) HTTPSURL() string { return "https://" + r.Host + "/" + r.Path + ".git" }

// Name is the last segment of the path (the directory a clone makes).
func (r Repo) Name() string { return r.Path[strings.LastIndex(r.Path, "/")+1:] }

var (
	hostRE    = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)
	segmentRE = regexp.MustCompile(`^[A-Za-z0-9_.~-]+$`)
	scpRE     = regexp.MustCompile(`^([A-Za-z0-9_.-]+)@([^:/]+):(.+)$`)
)

// ErrBadURL is returned (wrapped, with the reason) for a URL that is not a repository URL runs accept.
var ErrBadURL = errors.New("not a repository URL")

func bad(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrBadURL, fmt.Sprintf(format, a...))
}

// Parse reads a repository URL: https://host/org/repo[.git], ssh://[user@]host[:port]/org/repo[.git],
// user@host:org/repo[.git] or git://host/org/repo[.git].
func Parse(raw string) (Repo, error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return Repo{}, bad("the URL is empty")
	}
	if len(s) > 2048 || strings.ContainsAny(s, " \t\r\n\x00\\") {
		return Repo{}, bad("the URL is too long or contains spaces, backslashes or control characters")
	}
	var host, path string
	if m := scpRE.FindStringSubmatch(s); m != nil && !strings.Contains(s, "://") {
		host, path = m[2], m[3]
	} else {
		u, err := url.Parse(s)
		if err != nil {
			return Repo{}, bad("%v", err)
		}
		switch u.Scheme {
		case "https", "git":
			if u.User != nil {
				return Repo{}, bad("credentials in the URL are refused: store the token as a secret and name it in credentials_secret")
			}
		case "ssh", "git+ssh":
			if _, set := u.User.Password(); set {
				return Repo{}, bad("credentials in the URL are refused")
			}
		case "http":
			return Repo{}, bad("plain http is refused: use https")
		case "file", "":
			return Repo{}, bad("local repositories (file:// URLs and host paths) are refused: give an https, ssh or git URL")
		default:
			return Repo{}, bad("scheme %q: use https, ssh or git", u.Scheme)
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return Repo{}, bad("queries and fragments are refused")
		}
		host, path = u.Hostname(), u.Path
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "" || len(host) > 253 {
		return Repo{}, bad("no host")
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.IsLoopback() || a.IsUnspecified() || a.IsLinkLocalUnicast() {
			return Repo{}, bad("host %s is this machine or a link-local address", host)
		}
	} else if !hostRE.MatchString(host) || host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return Repo{}, bad("%q is not a host name", host)
	}
	path = strings.TrimSuffix(strings.Trim(path, "/"), ".git")
	path = strings.Trim(path, "/")
	segs := strings.Split(path, "/")
	if path == "" || len(segs) < 1 {
		return Repo{}, bad("no repository path")
	}
	for _, seg := range segs {
		if seg == "." || seg == ".." || !segmentRE.MatchString(seg) || strings.HasPrefix(seg, "-") {
			return Repo{}, bad("path segment %q is not allowed", seg)
		}
	}
	return Repo{Host: host, Path: path}, nil
}

// refRE is what refs, branches and commits may be made of (git check-ref-format's rules, more strictly).
var refRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}$`)

// CheckRef checks a branch, tag or commit name given by a user. It is passed to git as an argument, so nothing
// option-like (a leading '-') gets through, and nothing git would refuse as a ref name.
func CheckRef(ref string) error {
	if !refRE.MatchString(ref) {
		return errors.New("must be 1-200 letters, digits, '.', '_', '/', '+' or '-', starting with a letter or digit")
	}
	if strings.Contains(ref, "..") || strings.Contains(ref, "//") || strings.HasSuffix(ref, "/") ||
		strings.HasSuffix(ref, ".") || strings.HasSuffix(ref, ".lock") || strings.Contains(ref, "/.") {
		return errors.New("is not a valid git ref name")
	}
	return nil
}
