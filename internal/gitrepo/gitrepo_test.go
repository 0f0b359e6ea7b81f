package gitrepo

import (
	"errors"
	"testing"
)

func TestParseAcceptsEveryUsualForm(t *testing.T) {
	for in, want := range map[string]string{
		"https://github.com/org/repo":           "github.com/org/repo",
		"https://github.com/org/repo.git":       "github.com/org/repo",
		"https://GitHub.com/org/repo/":          "github.com/org/repo",
		"https://gitlab.com/group/sub/repo.git": "gitlab.com/group/sub/repo",
		"ssh://git@github.com/org/repo.git":     "github.com/org/repo",
		"ssh://git@github.com:2222/org/repo":    "github.com/org/repo",
		"git@github.com:org/repo.git":           "github.com/org/repo",
		"git://git.example.org/proj.git":        "git.example.org/proj",
		"https://git.corp.example:8443/a/b":     "git.corp.example/a/b",
		"https://203.0.113.7/org/repo":          "203.0.113.7/org/repo",
	} {
		r, err := Parse(in)
		if err != nil || r.Key() != want {
			t.Errorf("Parse(%q) = %q, %v; want %q", in, r.Key(), err, want)
		}
	}
	r, _ := Parse("git@github.com:org/my-repo.git")
	if r.HTTPSURL() != "https://github.com/org/my-repo.git" || r.Name() != "my-repo" {
		t.Fatalf("%+v: %s %s", r, r.HTTPSURL(), r.Name())
	}
}

func TestParseRefusesWhatIsNotARemoteRepository(t *testing.T) {
	for _, in := range []string{
		"", "/srv/git/repo", "./repo", "../repo", "file:///srv/git/repo", "file://host/repo",
		"http://github.com/org/repo", "ftp://x/y", "https://user:pw@github.com/org/repo",
		"https://token@github.com/org/repo", "ssh://u:pw@host/x", "https://github.com/org/repo?x=1",
		"https://github.com/org/../etc", "https://github.com/", "https://localhost/org/repo",
		"https://127.0.0.1/org/repo", "https://[::1]/org/repo", "https://169.254.169.254/latest/meta-data",
		"https://github.com/org/-upload-pack=x", "https://git hub.com/x", "https://github.com/a\\b",
		"ext::sh -c touch% /tmp/pwned", "https://github.com/org/repo#frag",
	} {
		if r, err := Parse(in); !errors.Is(err, ErrBadURL) {
			t.Errorf("Parse(%q) = %+v, %v; want ErrBadURL", in, r, err)
		}
	}
}

func TestCheckRef(t *testing.T) {
	for _, ok := range []string{"main", "release/1.2", "v1.0.0", "feature/x-y_z", "0123abcd", "aetherium/run-1234abcd"} {
		if err := CheckRef(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-x", "--upload-pack=evil", "a..b", "a/", "a.lock", "a//b", "a b", "a~1", "a^", "a:b", "x/.y", "HEAD@{1}"} {
		if CheckRef(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
