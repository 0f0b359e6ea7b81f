package helmtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/aetherium/aetherium/internal/config"
)

// helmVersion is the helm release scripts/setup.sh builds; defaultHelm is where it caches it.
const (
	helmVersion = "v4.3.2"
	defaultHelm = "/var/cache/aetherium/bin/helm-" + helmVersion
	chartDir    = "../aetherium"
	release     = "aeth"
	namespace   = "vm-platform"
)

// helmBin returns the helm binary: AETHERIUM_TEST_HELM_BIN, else the cache path. Missing: fail when
// AETHERIUM_REQUIRE_SERVICES=1, else skip loudly.
func helmBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("AETHERIUM_TEST_HELM_BIN")
	if bin == "" {
		bin = defaultHelm
	}
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("helm %s not found at %s (%v): run `scripts/setup.sh services` to build it, or set "+
			"AETHERIUM_TEST_HELM_BIN", helmVersion, bin, err)
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			t.Fatal(msg)
		}
		t.Skip("SKIP (helm chart untested): " + msg)
	}
	return bin
}

// helm runs the binary with a private home, so no user's repositories, plugins or registry logins play a part and
// nothing is downloaded.
func helm(t *testing.T, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, helmBin(t), args...)
	home := t.TempDir()
	cmd.Env = []string{"HOME=" + home, "PATH=/usr/bin:/bin", "HELM_CACHE_HOME=" + filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(home, "config"), "HELM_DATA_HOME=" + filepath.Join(home, "data"),
		"KUBECONFIG=" + filepath.Join(home, "no-kubeconfig")}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.Bytes(), e.Bytes(), err
}

// valueSets are the values every test renders: the defaults and each example file.
func valueSets(t *testing.T) map[string][]string {
	t.Helper()
	sets := map[string][]string{"default": nil}
	files, err := filepath.Glob(filepath.Join(chartDir, "examples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("want at least two example values files in %s/examples, found %d", chartDir, len(files))
	}
	for _, f := range files {
		sets[filepath.Base(f)] = []string{"-f", f}
	}
	return sets
}

func TestLintStrict(t *testing.T) {
	for name, args := range valueSets(t) {
		t.Run(name, func(t *testing.T) {
			out, errOut, err := helm(t, append([]string{"lint", "--strict", chartDir}, args...)...)
			if err != nil {
				t.Fatalf("helm lint --strict: %v\n%s%s", err, out, errOut)
			}
			if !bytes.Contains(out, []byte("0 chart(s) failed")) {
				t.Fatalf("helm lint did not report success:\n%s%s", out, errOut)
			}
		})
	}
}

// object is one rendered manifest: its kind and name, and the typed (or, for CRDs, unstructured) value.
type object struct {
	kind, name string
	obj        any
}

func newScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{appsv1.AddToScheme, corev1.AddToScheme, batchv1.AddToScheme,
		policyv1.AddToScheme, networkingv1.AddToScheme, autoscalingv2.AddToScheme} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// strictDecoder decodes YAML into the typed object of its apiVersion and kind, refusing unknown and duplicate
// fields (the API server would drop the first silently).
func strictDecoder(s *runtime.Scheme) runtime.Decoder {
	return kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, s, s, kjson.SerializerOptions{Yaml: true, Strict: true})
}

// decodeAll splits a rendered stream into documents and decodes each strictly. A ServiceMonitor (a CRD of the
// Prometheus Operator) has no type in k8s.io/api, and importing the operator's module for one test would bring a
// large dependency tree: it is decoded as unstructured and its fields are checked against the CRD's by
// checkServiceMonitor instead.
func decodeAll(t *testing.T, dec runtime.Decoder, manifest []byte) []object {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	var out []object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("split rendered manifests: %v", err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		var u unstructured.Unstructured
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatalf("rendered document is not YAML: %v\n%s", err, doc)
		}
		if err := u.UnmarshalJSON(j); err != nil {
			t.Fatalf("rendered document has no apiVersion/kind: %v\n%s", err, doc)
		}
		if u.GetAPIVersion() == "monitoring.coreos.com/v1" && u.GetKind() == "ServiceMonitor" {
			out = append(out, object{u.GetKind(), u.GetName(), &u})
			continue
		}
		obj, _, err := dec.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s %s does not decode strictly into its API type: %v\n%s", u.GetKind(), u.GetName(), err, doc)
		}
		out = append(out, object{u.GetKind(), u.GetName(), obj})
	}
	return out
}

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, l := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.Bytes()
}

func render(t *testing.T, args ...string) []byte {
	t.Helper()
	out, errOut, err := helm(t, append([]string{"template", release, chartDir, "--namespace", namespace}, args...)...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, errOut)
	}
	return out
}

// The decoder itself must refuse what the API would silently drop, or the strict checks below prove nothing.
func TestStrictDecoderRefusesUnknownFields(t *testing.T) {
	dec := strictDecoder(newScheme(t))
	doc := []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 2\n")
	if _, _, err := dec.Decode(doc, nil, nil); err == nil || !strings.Contains(err.Error(), "replica") {
		t.Fatalf("unknown field spec.replica: got %v, want a strict decoding error naming it", err)
	}
	doc = []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: 2\n")
	if _, _, err := dec.Decode(doc, nil, nil); err != nil {
		t.Fatalf("a valid Deployment is refused: %v", err)
	}
}

func TestTemplateDecodesStrictly(t *testing.T) {
	dec := strictDecoder(newScheme(t))
	known := knownSettings()
	for name, args := range valueSets(t) {
		t.Run(name, func(t *testing.T) {
			objs := decodeAll(t, dec, render(t, args...))
			vals := values(t, args)
			checkCommon(t, objs, known, vals)
			checkGateway(t, objs, vals)
			checkWorker(t, objs, vals)
		})
	}
}

// chartValues are the few values the checks depend on: the chart's defaults, overridden by what the example file
// sets (read from the file itself, so a template that ignores a value is caught).
type chartValues struct {
	imageRepository string
	nodeSelector    map[string]string
	kvmResource     string
	tunResource     string
	privileged      bool
	hpa             bool
	ingress         bool
	metricsToken    bool
	serviceMonitor  bool
}

func values(t *testing.T, args []string) chartValues {
	t.Helper()
	v := chartValues{imageRepository: "aetherium/aetherium", nodeSelector: map[string]string{"aetherium.io/vm-host": "true"},
		privileged: true}
	if len(args) == 0 {
		return v
	}
	b, err := os.ReadFile(args[1])
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Image struct {
			Repository string `json:"repository"`
		} `json:"image"`
		Metrics struct {
			Token struct {
				Enabled bool `json:"enabled"`
			} `json:"token"`
			ServiceMonitor struct {
				Enabled bool `json:"enabled"`
			} `json:"serviceMonitor"`
		} `json:"metrics"`
		Gateway struct {
			Ingress struct {
				Enabled bool `json:"enabled"`
			} `json:"ingress"`
			Autoscaling struct {
				Enabled bool `json:"enabled"`
			} `json:"autoscaling"`
		} `json:"gateway"`
		Worker struct {
			NodeSelector map[string]string `json:"nodeSelector"`
			Privileged   *bool             `json:"privileged"`
			KVM          struct {
				ResourceName string `json:"resourceName"`
			} `json:"kvm"`
			Tun struct {
				ResourceName string `json:"resourceName"`
			} `json:"tun"`
		} `json:"worker"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if f.Image.Repository != "" {
		v.imageRepository = f.Image.Repository
	}
	if f.Worker.NodeSelector != nil {
		v.nodeSelector = f.Worker.NodeSelector
	}
	if f.Worker.Privileged != nil {
		v.privileged = *f.Worker.Privileged
	}
	v.kvmResource, v.tunResource = f.Worker.KVM.ResourceName, f.Worker.Tun.ResourceName
	v.hpa, v.ingress = f.Gateway.Autoscaling.Enabled, f.Gateway.Ingress.Enabled
	v.metricsToken, v.serviceMonitor = f.Metrics.Token.Enabled, f.Metrics.ServiceMonitor.Enabled
	return v
}

// knownSettings are the AETHERIUM_* variables internal/config reads (one per flag of config.Flags).
func knownSettings() map[string]bool {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	config.Flags(fs)
	out := map[string]bool{}
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name != "config" {
			out[config.EnvName(strings.ReplaceAll(f.Name, "-", "_"))] = true
		}
	})
	return out
}

// secretEnv lists the settings whose values are secrets: they must come from a secretKeyRef, never a literal.
var secretEnv = []string{"AETHERIUM_DATABASE_URL", "AETHERIUM_REDIS_URL", "AETHERIUM_CLUSTER_TOKEN",
	"AETHERIUM_SECRETS_KEY", "AETHERIUM_SECRETS_OLD_KEYS", "AETHERIUM_METRICS_TOKEN", "AETHERIUM_GITHUB_WEBHOOK_SECRET",
	"AETHERIUM_SLACK_SIGNING_SECRET", "AETHERIUM_SLACK_BOT_TOKEN", "AETHERIUM_SLACK_APP_TOKEN",
	"AETHERIUM_LOKI_PASSWORD", "AETHERIUM_LOKI_BEARER_TOKEN", "AETHERIUM_OTLP_HEADERS"}

func podSpecs(objs []object) map[string]*corev1.PodTemplateSpec {
	out := map[string]*corev1.PodTemplateSpec{}
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *appsv1.Deployment:
			out["Deployment/"+o.name] = &v.Spec.Template
		case *appsv1.DaemonSet:
			out["DaemonSet/"+o.name] = &v.Spec.Template
		case *batchv1.Job:
			out["Job/"+o.name] = &v.Spec.Template
		}
	}
	return out
}

func checkCommon(t *testing.T, objs []object, known map[string]bool, v chartValues) {
	t.Helper()
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.kind]++
		switch o.kind {
		case "Secret":
			t.Errorf("the chart renders Secret %s: secrets must come from existing Secrets only", o.name)
		case "ConfigMap":
			t.Errorf("unexpected ConfigMap %s", o.name)
		}
		if !strings.HasPrefix(o.name, release+"-aetherium-") && o.name != release+"-aetherium" {
			t.Errorf("%s %s is not named after the release", o.kind, o.name)
		}
	}
	for _, k := range []string{"Deployment", "DaemonSet", "Service", "Job", "NetworkPolicy", "PodDisruptionBudget", "ServiceAccount"} {
		if kinds[k] == 0 {
			t.Errorf("no %s rendered", k)
		}
	}
	for where, pod := range podSpecs(objs) {
		if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
			t.Errorf("%s mounts a service account token; Aetherium calls no Kubernetes API", where)
		}
		for _, c := range pod.Spec.Containers {
			if !strings.HasPrefix(c.Image, v.imageRepository+":") && !strings.HasPrefix(c.Image, v.imageRepository+"@") {
				t.Errorf("%s container %s uses image %q, want the project's own %s", where, c.Name, c.Image, v.imageRepository)
			}
			if c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
				t.Errorf("%s container %s: root filesystem is not read-only", where, c.Name)
			}
			envs := map[string]corev1.EnvVar{}
			for _, e := range c.Env {
				envs[e.Name] = e
				if strings.HasPrefix(e.Name, "AETHERIUM_") && !known[e.Name] {
					t.Errorf("%s sets %s, which internal/config does not know", where, e.Name)
				}
			}
			for _, name := range secretEnv {
				e, ok := envs[name]
				if !ok {
					continue
				}
				if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
					t.Errorf("%s: %s is not read from a Secret (secretKeyRef)", where, name)
				}
			}
			if !strings.HasPrefix(where, "Job/") {
				for _, name := range []string{"AETHERIUM_DATABASE_URL", "AETHERIUM_REDIS_URL", "AETHERIUM_CLUSTER_TOKEN", "AETHERIUM_SECRETS_KEY"} {
					if e, ok := envs[name]; !ok || e.ValueFrom.SecretKeyRef.Optional != nil {
						t.Errorf("%s: %s must be a required secretKeyRef", where, name)
					}
				}
			}
			if _, ok := envs["AETHERIUM_METRICS_TOKEN"]; ok != (v.metricsToken && !strings.HasPrefix(where, "Job/")) {
				t.Errorf("%s: metrics token env present=%v, want %v", where, ok, v.metricsToken)
			}
		}
	}
}

func find[T any](t *testing.T, objs []object, kind, name string) T {
	t.Helper()
	for _, o := range objs {
		if o.kind == kind && o.name == name {
			return o.obj.(T)
		}
	}
	var zero T
	t.Fatalf("no %s %s rendered", kind, name)
	return zero
}

func has(objs []object, kind, name string) bool {
	return slices.ContainsFunc(objs, func(o object) bool { return o.kind == kind && o.name == name })
}

func env(c corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

func checkGateway(t *testing.T, objs []object, v chartValues) {
	t.Helper()
	name := release + "-aetherium-gateway"
	d := find[*appsv1.Deployment](t, objs, "Deployment", name)
	pod := d.Spec.Template
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("gateway pod has %d containers", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	if !slices.Equal(c.Args, []string{"gateway"}) {
		t.Errorf("gateway args %v", c.Args)
	}
	for _, p := range []struct {
		probe *corev1.Probe
		path  string
	}{{c.ReadinessProbe, "/api/v1/ready"}, {c.LivenessProbe, "/api/v1/health"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "http" {
			t.Errorf("gateway probe for %s: %+v", p.path, p.probe)
		}
	}
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "http" && p.ContainerPort == 8080 }) {
		t.Errorf("gateway has no http port 8080: %+v", c.Ports)
	}
	if e := env(c, "AETHERIUM_LISTEN"); e == nil || e.Value != ":8080" {
		t.Errorf("gateway AETHERIUM_LISTEN %+v", e)
	}
	if e := env(c, "AETHERIUM_AUTO_MIGRATE"); e == nil || e.Value != "false" {
		t.Errorf("with the migrations Job the gateway must not migrate: AETHERIUM_AUTO_MIGRATE %+v", e)
	}
	sc := c.SecurityContext
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 ||
		(sc.Privileged != nil && *sc.Privileged) {
		t.Errorf("gateway security context is not restricted: %+v", sc)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("gateway resources: %+v", c.Resources)
	}
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Errorf("gateway has no preStop sleep (traffic still arrives while endpoints are removed)")
	}
	if v.hpa != (d.Spec.Replicas == nil) {
		t.Errorf("autoscaling %v but Deployment replicas %v", v.hpa, d.Spec.Replicas)
	}
	podLabels := labels.Set(pod.Labels)
	if sel := labels.SelectorFromSet(d.Spec.Selector.MatchLabels); !sel.Matches(podLabels) {
		t.Errorf("gateway selector does not match its pods")
	}

	svc := find[*corev1.Service](t, objs, "Service", name)
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
		t.Errorf("gateway Service selects %v, not the gateway pods %v", svc.Spec.Selector, pod.Labels)
	}
	if svc.Spec.Ports[0].TargetPort.String() != "http" {
		t.Errorf("gateway Service target %v", svc.Spec.Ports[0].TargetPort)
	}
	pdb := find[*policyv1.PodDisruptionBudget](t, objs, "PodDisruptionBudget", name)
	if !labels.SelectorFromSet(pdb.Spec.Selector.MatchLabels).Matches(podLabels) {
		t.Errorf("PodDisruptionBudget does not select the gateway pods")
	}
	if (pdb.Spec.MinAvailable == nil) == (pdb.Spec.MaxUnavailable == nil) {
		t.Errorf("PodDisruptionBudget needs exactly one of minAvailable/maxUnavailable: %+v", pdb.Spec)
	}
	if has(objs, "HorizontalPodAutoscaler", name) != v.hpa {
		t.Errorf("HPA rendered=%v, want %v", !v.hpa, v.hpa)
	} else if v.hpa {
		h := find[*autoscalingv2.HorizontalPodAutoscaler](t, objs, "HorizontalPodAutoscaler", name)
		if h.Spec.ScaleTargetRef.Kind != "Deployment" || h.Spec.ScaleTargetRef.Name != name || len(h.Spec.Metrics) == 0 {
			t.Errorf("HPA target %+v metrics %d", h.Spec.ScaleTargetRef, len(h.Spec.Metrics))
		}
	}
	if has(objs, "Ingress", name) != v.ingress {
		t.Errorf("Ingress rendered=%v, want %v", !v.ingress, v.ingress)
	} else if v.ingress {
		ing := find[*networkingv1.Ingress](t, objs, "Ingress", name)
		for _, r := range ing.Spec.Rules {
			for _, p := range r.HTTP.Paths {
				if p.Backend.Service == nil || p.Backend.Service.Name != name || p.Backend.Service.Port.Name != "http" {
					t.Errorf("Ingress path %s goes to %+v", p.Path, p.Backend)
				}
			}
		}
	}

	job := find[*batchv1.Job](t, objs, "Job", release+"-aetherium-migrate")
	if hooks := job.Annotations["helm.sh/hook"]; hooks != "pre-install,pre-upgrade" {
		t.Errorf("migrations Job hook %q", hooks)
	}
	jc := job.Spec.Template.Spec.Containers[0]
	if !slices.Equal(jc.Args, []string{"migrate"}) || env(jc, "AETHERIUM_DATABASE_URL") == nil {
		t.Errorf("migrations Job runs %v without the database URL", jc.Args)
	}
	if job.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("migrations Job restart policy %q", job.Spec.Template.Spec.RestartPolicy)
	}
}

func checkWorker(t *testing.T, objs []object, v chartValues) {
	t.Helper()
	name := release + "-aetherium-worker"
	ds := find[*appsv1.DaemonSet](t, objs, "DaemonSet", name)
	pod := ds.Spec.Template
	c := pod.Spec.Containers[0]
	if !slices.Equal(c.Args, []string{"worker"}) {
		t.Errorf("worker args %v", c.Args)
	}
	if e := env(c, "AETHERIUM_WORKER_ID"); e == nil || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil ||
		e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("worker id is not the node name (downward API spec.nodeName): %+v", e)
	}
	ip, url := env(c, "POD_IP"), env(c, "AETHERIUM_WORKER_API_URL")
	if ip == nil || ip.ValueFrom.FieldRef.FieldPath != "status.podIP" || url == nil || url.Value != "http://$(POD_IP):8081" {
		t.Errorf("worker API URL is not the pod's address: %+v %+v", ip, url)
	}
	if slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "POD_IP" }) >
		slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "AETHERIUM_WORKER_API_URL" }) {
		t.Errorf("POD_IP must come before AETHERIUM_WORKER_API_URL for $(POD_IP) to expand")
	}
	if !mapsEqual(pod.Spec.NodeSelector, v.nodeSelector) {
		t.Errorf("worker nodeSelector %v, want %v", pod.Spec.NodeSelector, v.nodeSelector)
	}
	if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || *g < 300 {
		t.Errorf("worker grace period %v: SIGTERM drains running tasks, it must be long", g)
	}
	if c.StartupProbe == nil || c.StartupProbe.TCPSocket == nil || c.StartupProbe.TCPSocket.Port.String() != "worker-api" {
		t.Errorf("worker startup probe %+v", c.StartupProbe)
	}
	volumes := map[string]corev1.Volume{}
	for _, vol := range pod.Spec.Volumes {
		volumes[vol.Name] = vol
	}
	hostDev := func(path string) bool {
		for _, vol := range volumes {
			if vol.HostPath != nil && vol.HostPath.Path == path {
				return true
			}
		}
		return false
	}
	sc := c.SecurityContext
	privileged := sc.Privileged != nil && *sc.Privileged
	if privileged != v.privileged {
		t.Errorf("worker privileged=%v, want %v", privileged, v.privileged)
	}
	limits := c.Resources.Limits
	if v.kvmResource != "" {
		if q, ok := limits[corev1.ResourceName(v.kvmResource)]; !ok || q.Value() != 1 {
			t.Errorf("worker does not request %s: limits %v", v.kvmResource, limits)
		}
		if hostDev("/dev/kvm") {
			t.Errorf("worker mounts /dev/kvm from the node although the device plugin provides it")
		}
	} else if !hostDev("/dev/kvm") {
		t.Errorf("worker has neither a KVM device-plugin resource nor /dev/kvm from the node")
	}
	if v.tunResource != "" {
		if _, ok := limits[corev1.ResourceName(v.tunResource)]; !ok || hostDev("/dev/net/tun") {
			t.Errorf("worker tun: limits %v, hostPath %v", limits, hostDev("/dev/net/tun"))
		}
	} else if !hostDev("/dev/net/tun") {
		t.Errorf("worker has no /dev/net/tun")
	}
	if !privileged {
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil ||
			!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
			!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_BIND_SERVICE"}) {
			t.Errorf("unprivileged worker security context: %+v", sc)
		}
		names := map[string]bool{}
		for _, s := range pod.Spec.SecurityContext.Sysctls {
			names[s.Name] = s.Value == "1"
		}
		if !names["net.ipv4.ip_forward"] {
			t.Errorf("unprivileged worker without the ip_forward pod sysctl: %+v", pod.Spec.SecurityContext.Sysctls)
		}
	}

	np := find[*networkingv1.NetworkPolicy](t, objs, "NetworkPolicy", name)
	if !labels.SelectorFromSet(np.Spec.PodSelector.MatchLabels).Matches(labels.Set(pod.Labels)) {
		t.Errorf("NetworkPolicy does not select the worker pods")
	}
	gw := find[*appsv1.Deployment](t, objs, "Deployment", release+"-aetherium-gateway").Spec.Template.Labels
	apiRules := 0
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			if p.Port.IntValue() != 8081 {
				continue
			}
			apiRules++
			if len(rule.From) == 0 {
				t.Errorf("the worker API port is open to every peer")
			}
			for _, peer := range rule.From {
				if peer.PodSelector == nil || peer.NamespaceSelector != nil || peer.IPBlock != nil {
					t.Errorf("worker API peer is not a same-namespace pod selector: %+v", peer)
					continue
				}
				sel := labels.SelectorFromSet(peer.PodSelector.MatchLabels)
				if !sel.Matches(labels.Set(gw)) || sel.Matches(labels.Set(pod.Labels)) {
					t.Errorf("worker API peer %v does not select exactly the gateways", peer.PodSelector.MatchLabels)
				}
			}
		}
	}
	if apiRules != 1 {
		t.Errorf("NetworkPolicy has %d rules for the worker API port, want 1", apiRules)
	}

	if has(objs, "ServiceMonitor", name) != v.serviceMonitor {
		t.Errorf("ServiceMonitor rendered=%v, want %v", !v.serviceMonitor, v.serviceMonitor)
	} else if v.serviceMonitor {
		for _, n := range []string{name, release + "-aetherium-gateway"} {
			checkServiceMonitor(t, find[*unstructured.Unstructured](t, objs, "ServiceMonitor", n), v)
		}
	}
}

// checkServiceMonitor checks the fields of the unstructured ServiceMonitor against the subset of the CRD's schema
// (monitoring.coreos.com/v1) the chart uses: anything else is an error, as in a strict decode.
func checkServiceMonitor(t *testing.T, u *unstructured.Unstructured, v chartValues) {
	t.Helper()
	allowed := map[string][]string{
		"":                               {"apiVersion", "kind", "metadata", "spec"},
		"metadata":                       {"name", "labels"},
		"spec":                           {"selector", "endpoints"},
		"spec.selector":                  {"matchLabels"},
		"spec.endpoints[]":               {"port", "path", "interval", "scrapeTimeout", "authorization"},
		"spec.endpoints[].authorization": {"type", "credentials"},
		"spec.endpoints[].authorization.credentials": {"name", "key"},
	}
	var walk func(path string, m map[string]any)
	walk = func(path string, m map[string]any) {
		for k, val := range m {
			if !slices.Contains(allowed[path], k) {
				if path == "metadata.labels" || path == "spec.selector.matchLabels" {
					continue
				}
				t.Errorf("ServiceMonitor %s: unknown field %s.%s", u.GetName(), path, k)
				continue
			}
			p := strings.TrimPrefix(path+"."+k, ".")
			switch x := val.(type) {
			case map[string]any:
				if _, ok := allowed[p]; ok || p == "metadata.labels" || p == "spec.selector.matchLabels" {
					walk(p, x)
				}
			case []any:
				for _, item := range x {
					if im, ok := item.(map[string]any); ok {
						walk(p+"[]", im)
					}
				}
			}
		}
	}
	walk("", u.Object)
	eps, _, _ := unstructured.NestedSlice(u.Object, "spec", "endpoints")
	if len(eps) != 1 {
		t.Fatalf("ServiceMonitor %s: %d endpoints", u.GetName(), len(eps))
	}
	ep := eps[0].(map[string]any)
	if ep["port"] != "metrics" || ep["path"] != "/metrics" {
		t.Errorf("ServiceMonitor %s endpoint %v", u.GetName(), ep)
	}
	if _, ok := ep["authorization"]; ok != v.metricsToken {
		t.Errorf("ServiceMonitor %s: authorization present=%v, want %v", u.GetName(), ok, v.metricsToken)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Values that break the schema (or the chart's own rules) must be refused by both lint and template, with a
// message that points at the mistake, and nothing rendered.
func TestBadValuesRefused(t *testing.T) {
	// templateOnly: a rule of the templates (`fail`), which `helm lint` does not enforce: it renders in lint mode,
	// where fail and required only warn. Only template (and so install and upgrade) is asserted for those.
	cases := []struct {
		name, values, want string
		templateOnly       bool
	}{
		{"unknown top-level key", "gatway:\n  replicas: 3\n", "gatway", false},
		{"unknown nested key", "gateway:\n  replica: 3\n", "replica", false},
		{"secret as plain config", "config:\n  database_url: postgres://u:p@db/aetherium\n", "database_url", false},
		{"chart-managed setting in config", "worker:\n  config:\n    worker_id: fixed\n", "worker_id", false},
		{"wrong type", "worker:\n  apiPort: \"8081\"\n", "apiPort", false},
		{"bad enum", "config:\n  backend: kvm\n", "backend", false},
		{"capability refused", "worker:\n  capabilities: [SYS_ADMIN]\n", "capabilities", false},
		{"empty secret key", "secrets:\n  databaseURL:\n    key: \"\"\n", "key", false},
		{"docker backend for workers", "worker:\n  config:\n    backend: docker\n", "backend", false},
		{"docker backend shared", "config:\n  backend: docker\nworker:\n  config:\n    backend: null\n", "Docker engine", true},
		{"unprivileged without a kvm device plugin", "worker:\n  privileged: false\n", "kvm.resourceName", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "bad.yaml")
			if err := os.WriteFile(f, []byte(tc.values), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, args := range [][]string{
				{"template", release, chartDir, "-f", f},
				{"lint", "--strict", chartDir, "-f", f},
			} {
				if tc.templateOnly && args[0] == "lint" {
					continue
				}
				out, errOut, err := helm(t, args...)
				if err == nil {
					t.Fatalf("helm %s accepted %q:\n%s", args[0], tc.values, out)
				}
				if msg := string(out) + string(errOut); !strings.Contains(msg, tc.want) {
					t.Errorf("helm %s refused %q without naming %q:\n%s", args[0], tc.values, tc.want, msg)
				}
			}
		})
	}
}

// The schema must stand alone (lint runs offline), and its config keys must be real settings that are neither
// secret nor managed by the chart.
func TestSchemaIsSelfContainedAndMatchesConfig(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	var refs []string
	var walk func(any)
	walk = func(x any) {
		switch v := x.(type) {
		case map[string]any:
			for k, val := range v {
				if k == "$ref" || k == "$dynamicRef" {
					refs = append(refs, fmt.Sprint(val))
				}
				walk(val)
			}
		case []any:
			for _, val := range v {
				walk(val)
			}
		}
	}
	walk(schema)
	for _, r := range refs {
		if !strings.HasPrefix(r, "#/") {
			t.Errorf("values.schema.json refers outside itself: $ref %q", r)
		}
	}
	if len(refs) == 0 {
		t.Errorf("no local $ref found: the walk is broken")
	}
	known := knownSettings()
	managed := []string{"data_dir", "listen", "database_url", "redis_url", "worker_id", "worker_api_listen",
		"worker_api_url", "cluster_token", "cluster_token_file", "secrets_key", "secrets_key_file", "metrics_listen",
		"metrics_token", "debug_listen", "shutdown_timeout", "auto_migrate"}
	props := schema["$defs"].(map[string]any)["config"].(map[string]any)["properties"].(map[string]any)
	for k := range props {
		env := config.EnvName(k)
		if !known[env] {
			t.Errorf("schema config key %s is not a setting of internal/config", k)
		}
		if slices.Contains(managed, k) || slices.Contains(secretEnv, env) {
			t.Errorf("schema config key %s is secret or managed by the chart", k)
		}
	}
	for env := range known {
		k := strings.ToLower(strings.TrimPrefix(env, "AETHERIUM_"))
		if _, ok := props[k]; !ok && !slices.Contains(managed, k) && !slices.Contains(secretEnv, env) &&
			!strings.HasSuffix(k, "_file") {
			t.Errorf("setting %s is neither in the schema's config nor managed by the chart", k)
		}
	}
}
