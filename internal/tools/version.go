package tools

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// numericSpecPattern is a version prefix or an exact release: "24", "24.21", "24.21.0".
var numericSpecPattern = regexp.MustCompile(`^[0-9]+(\.[0-9]+){0,2}$`)

func numericSpec(s string) bool { return numericSpecPattern.MatchString(s) }

// semver is the part of a version that orders it: numeric components and a pre-release tag (build metadata
// after '+' is ignored, as semver says).
type semver struct {
	nums []int
	pre  string
	ok   bool // the version started with numeric components
}

func parseSemver(v string) semver {
	v, _, _ = strings.Cut(v, "+")
	core, pre, _ := strings.Cut(v, "-")
	var s semver
	for part := range strings.SplitSeq(core, ".") {
		n, err := strconv.Atoi(part)
		if err != nil || n < 0 {
			return semver{}
		}
		s.nums = append(s.nums, n)
	}
	s.pre, s.ok = pre, len(s.nums) > 0
	return s
}

// compareVersions orders versions as semver does (a pre-release before its release); versions that do not parse
// sort before those that do, and among themselves as strings.
func compareVersions(a, b string) int {
	sa, sb := parseSemver(a), parseSemver(b)
	switch {
	case !sa.ok && !sb.ok:
		return strings.Compare(a, b)
	case !sa.ok:
		return -1
	case !sb.ok:
		return 1
	}
	for i := range max(len(sa.nums), len(sb.nums)) {
		var x, y int
		if i < len(sa.nums) {
			x = sa.nums[i]
		}
		if i < len(sb.nums) {
			y = sb.nums[i]
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	switch {
	case sa.pre == sb.pre:
		return 0
	case sa.pre == "":
		return 1
	case sb.pre == "":
		return -1
	}
	return comparePre(sa.pre, sb.pre)
}

// comparePre compares pre-release tags field by field, numeric fields numerically (semver 11.4).
func comparePre(a, b string) int {
	fa, fb := strings.Split(a, "."), strings.Split(b, ".")
	for i := range min(len(fa), len(fb)) {
		x, ex := strconv.Atoi(fa[i])
		y, ey := strconv.Atoi(fb[i])
		switch {
		case ex == nil && ey == nil:
			if x != y {
				if x < y {
					return -1
				}
				return 1
			}
		case ex == nil:
			return -1
		case ey == nil:
			return 1
		default:
			if c := strings.Compare(fa[i], fb[i]); c != 0 {
				return c
			}
		}
	}
	return len(fa) - len(fb)
}

// specMatches says whether the exact version v satisfies spec: equal, or spec a numeric prefix of a release
// ("24" and "24.21" match "24.21.0"; pre-releases match only when named exactly).
func specMatches(v, spec string) bool {
	if v == spec {
		return true
	}
	if !numericSpec(spec) {
		return false
	}
	sv := parseSemver(v)
	if !sv.ok || sv.pre != "" {
		return false
	}
	want := parseSemver(spec).nums
	if len(want) > len(sv.nums) {
		return false
	}
	for i, n := range want {
		if sv.nums[i] != n {
			return false
		}
	}
	return true
}

// pickVersion returns the highest of versions that satisfies spec, or "".
func pickVersion(versions []string, spec string) string {
	best := ""
	for _, v := range versions {
		if specMatches(v, spec) && (best == "" || compareVersions(v, best) > 0) {
			best = v
		}
	}
	return best
}

// newestFirst returns up to n of the newest releases (no pre-releases), for "available versions" messages.
func newestFirst(versions []string, n int) []string {
	var rel []string
	for _, v := range versions {
		if s := parseSemver(v); s.ok && s.pre == "" {
			rel = append(rel, v)
		}
	}
	sortVersionsDesc(rel)
	if len(rel) > n {
		rel = rel[:n]
	}
	return rel
}

func sortVersionsDesc(vs []string) {
	slices.SortFunc(vs, func(a, b string) int { return compareVersions(b, a) })
}
