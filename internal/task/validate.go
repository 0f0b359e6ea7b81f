package task

import (
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"strings"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/pkg/client"
)

var (
	vmNameRE   = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)
	imageRE    = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._/:@-]{0,254}$`)
	envKeyRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,255}$`)
	userRE     = regexp.MustCompile(`^([a-z_][a-z0-9_.-]{0,31}\$?|[0-9]{1,10}(:[0-9]{1,10})?)$`)
	metaKeyRE  = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._/-]{0,62}$`)
	maxArgs    = 4096
	maxArgLen  = 128 << 10
	maxEnv     = 256
	maxMeta    = 32
	maxMetaVal = 1024
)

func invalid(field, format string, a ...any) error {
	return &ValidationError{Field: field, Message: fmt.Sprintf(format, a...)}
}

func parsePriority(p string, def model.Priority) (model.Priority, error) {
	if p == "" {
		return def, nil
	}
	pr := model.Priority(p)
	if !pr.Valid() {
		return "", invalid("priority", "must be one of critical, high, default, low (got %q)", p)
	}
	return pr, nil
}

// normalizeVMSpec applies defaults and limits to a create request and returns the spec to store.
func (s *Service) normalizeVMSpec(req client.CreateVMRequest) (model.VMSpec, error) {
	l := s.limits
	spec := model.VMSpec{Name: req.Name, VCPUs: req.VCPUs, MemoryMB: req.MemoryMB, Image: req.Image, Metadata: req.Metadata}
	if spec.Name == "" {
		return spec, invalid("name", "is required")
	}
	if !vmNameRE.MatchString(spec.Name) {
		return spec, invalid("name", "must be 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	if validID(spec.Name) {
		return spec, invalid("name", "must not look like a VM id (a UUID): names and ids share the CLI's VM argument")
	}
	if spec.VCPUs == 0 {
		spec.VCPUs = l.DefaultVCPUs
	}
	if spec.VCPUs < 1 || spec.VCPUs > l.MaxVCPUs {
		return spec, invalid("vcpus", "must be between 1 and %d (got %d)", l.MaxVCPUs, spec.VCPUs)
	}
	if spec.MemoryMB == 0 {
		spec.MemoryMB = l.DefaultMemoryMB
	}
	if spec.MemoryMB < l.MinMemoryMB || spec.MemoryMB > l.MaxMemoryMB {
		return spec, invalid("memory_mb", "must be between %d and %d (got %d)", l.MinMemoryMB, l.MaxMemoryMB, spec.MemoryMB)
	}
	if spec.Image != "" && !imageRE.MatchString(spec.Image) {
		return spec, invalid("image", "is not a valid image reference")
	}
	if len(spec.Metadata) > maxMeta {
		return spec, invalid("metadata", "has more than %d entries", maxMeta)
	}
	for k, v := range spec.Metadata {
		if !metaKeyRE.MatchString(k) {
			return spec, invalid("metadata", "key %q is not valid (letters, digits, '.', '_', '/', '-'; at most 63)", k)
		}
		if len(v) > maxMetaVal {
			return spec, invalid("metadata", "value of %q is longer than %d bytes", k, maxMetaVal)
		}
	}
	if req.Network != nil {
		eg, err := normalizeEgress(req.Network.Egress)
		if err != nil {
			return spec, err
		}
		spec.Network = &model.VMNetwork{Egress: eg}
	}
	if len(req.Tools) > maxTools || len(req.ToolVersions) > maxTools {
		return spec, invalid("tools", "at most %d tools", maxTools)
	}
	if len(req.Tools) > 0 || len(req.ToolVersions) > 0 {
		reqs, err := s.tools.Parse(req.Tools, req.ToolVersions)
		if err != nil {
			return spec, invalid("tools", "%v (known tools: %s)", err, strings.Join(s.tools.Names(), ", "))
		}
		for _, r := range reqs {
			spec.Tools = append(spec.Tools, r.String())
		}
	}
	lt, err := s.normalizeLifetime(req)
	if err != nil {
		return spec, err
	}
	spec.Lifetime = lt
	return spec, nil
}

// maxTools bounds a create request's tools.
const maxTools = 64

// maxEgressEntries bounds each list of an egress policy (each entry costs firewall set elements).
const maxEgressEntries = 1024

// domainRE is a DNS name: labels of letters, digits, '-' and '_', at most 253 characters, optionally "*." first.
var domainRE = regexp.MustCompile(`^(\*\.)?([a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?\.)*[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?\.?$`)

// normalizeEgress checks an egress policy: IPv4 CIDRs (masked) and DNS names (lower case, no final dot).
func normalizeEgress(p client.EgressPolicy) (model.EgressPolicy, error) {
	var out model.EgressPolicy
	cidrs := func(field string, in []string) ([]string, error) {
		if len(in) > maxEgressEntries {
			return nil, invalid(field, "at most %d entries", maxEgressEntries)
		}
		var o []string
		for _, c := range in {
			pfx, err := netip.ParsePrefix(strings.TrimSpace(c))
			if err != nil || !pfx.Addr().Is4() {
				return nil, invalid(field, "%q is not an IPv4 network such as 203.0.113.0/24 (guests have IPv4 only)", c)
			}
			o = append(o, pfx.Masked().String())
		}
		return o, nil
	}
	domains := func(field string, in []string) ([]string, error) {
		if len(in) > maxEgressEntries {
			return nil, invalid(field, "at most %d entries", maxEgressEntries)
		}
		var o []string
		for _, d := range in {
			d = strings.TrimSpace(d)
			if len(d) > 253 || !domainRE.MatchString(d) {
				return nil, invalid(field, "%q is not a DNS name", d)
			}
			o = append(o, strings.TrimSuffix(strings.TrimPrefix(strings.ToLower(d), "*."), "."))
		}
		return o, nil
	}
	var err error
	if out.AllowCIDRs, err = cidrs("network.egress.allow_cidrs", p.AllowCIDRs); err != nil {
		return out, err
	}
	if out.DenyCIDRs, err = cidrs("network.egress.deny_cidrs", p.DenyCIDRs); err != nil {
		return out, err
	}
	if out.AllowDomains, err = domains("network.egress.allow_domains", p.AllowDomains); err != nil {
		return out, err
	}
	if out.DenyDomains, err = domains("network.egress.deny_domains", p.DenyDomains); err != nil {
		return out, err
	}
	// The network manager bounds the CIDRs and the domains of a policy together.
	if len(out.AllowCIDRs)+len(out.DenyCIDRs) > maxEgressEntries {
		return out, invalid("network.egress", "at most %d CIDRs in allow_cidrs and deny_cidrs together", maxEgressEntries)
	}
	if len(out.AllowDomains)+len(out.DenyDomains) > maxEgressEntries {
		return out, invalid("network.egress", "at most %d domains in allow_domains and deny_domains together", maxEgressEntries)
	}
	return out, nil
}

// validateCommand checks one command of an execute request or a job.
func (s *Service) validateCommand(field string, c model.JobCommand) error {
	if strings.TrimSpace(c.Command) == "" {
		return invalid(field+"command", "is required")
	}
	if strings.ContainsRune(c.Command, 0) {
		return invalid(field+"command", "must not contain NUL bytes")
	}
	if len(c.Args) > maxArgs {
		return invalid(field+"args", "has more than %d arguments", maxArgs)
	}
	for i, a := range c.Args {
		if len(a) > maxArgLen || strings.ContainsRune(a, 0) {
			return invalid(field+"args", "argument %d is longer than %d bytes or contains NUL", i, maxArgLen)
		}
	}
	if len(c.Env) > maxEnv {
		return invalid(field+"env", "has more than %d variables", maxEnv)
	}
	for k, v := range c.Env {
		if !envKeyRE.MatchString(k) {
			return invalid(field+"env", "name %q is not a valid environment variable name", k)
		}
		if strings.ContainsRune(v, 0) {
			return invalid(field+"env", "value of %q contains NUL", k)
		}
	}
	if c.WorkingDir != "" && (!path.IsAbs(c.WorkingDir) || strings.ContainsRune(c.WorkingDir, 0)) {
		return invalid(field+"working_dir", "must be an absolute path")
	}
	if c.User != "" && !userRE.MatchString(c.User) {
		return invalid(field+"user", "must be a user name or uid[:gid] (got %q)", c.User)
	}
	maxSec := int(s.limits.MaxTimeout.Seconds())
	if c.TimeoutSeconds < 0 || c.TimeoutSeconds > maxSec {
		return invalid(field+"timeout_seconds", "must be between 0 (none) and %d", maxSec)
	}
	return nil
}
