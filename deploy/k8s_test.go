package deploy

import (
	"bytes"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lanegate/lanegate/config"
)

// podName stands for the pod's name where the downward API gives it.
const podName = "lanegate-5d8f7c9b4-x2k9q"

// kustomized is the output of kustomize for one directory.
type kustomized struct {
	dir  string
	docs []map[string]any
}

// kustomize renders dir with kubectl's built-in kustomize.
func kustomize(t *testing.T, dir string) kustomized {
	t.Helper()
	kubectl := tool(t, "kubectl", "", "the kustomizations")
	out, err := exec.Command(kubectl, "kustomize", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, out)
	}
	return kustomized{dir: dir, docs: yamlDocs(t, dir, bytes.NewReader(out))}
}

// one returns the only object of kind, failing unless there is exactly one.
func (k kustomized) one(t *testing.T, kind string) map[string]any {
	t.Helper()
	var found []map[string]any
	for _, d := range k.docs {
		if str(d, "kind") == kind {
			found = append(found, d)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s: %d objects of kind %s, want 1", k.dir, len(found), kind)
	}
	return found[0]
}

func (k kustomized) named(kind, name string) map[string]any {
	for _, d := range k.docs {
		if str(d, "kind") == kind && str(d, "metadata", "name") == name {
			return d
		}
	}
	return nil
}

// pod is the lanegate container of a rendered Deployment, with the
// environment it would start with and the configuration lanegate would
// load from it.
type pod struct {
	deployment, spec, container map[string]any
	env                         map[string]string
	// from says where each variable of env comes from: "image",
	// "configmap", "secret", "value" or "fieldRef:<path>".
	from map[string]string
	// envFile is the repository's file the image ships as lanegate's
	// default env file, which the pod reads under env.
	envFile string
	cfg     config.Config
}

// lanegatePod reads the Deployment of k. The Secret it refers to is made
// outside the repository; secretExamples are the files that list its keys.
func lanegatePod(t *testing.T, k kustomized, secretExamples ...string) pod {
	t.Helper()
	dep := k.one(t, "Deployment")
	p := pod{deployment: dep, env: map[string]string{}, from: map[string]string{}}
	p.spec, _ = get(dep, "spec", "template", "spec").(map[string]any)
	for _, c := range list(p.spec, "containers") {
		if str(c, "name") == "lanegate" {
			p.container = c.(map[string]any)
		}
	}
	if p.container == nil {
		t.Fatalf("%s: no container named lanegate", k.dir)
	}
	set := func(k, v, from string) { p.env[k], p.from[k] = v, from }
	img := dockerfile(t)
	for k, v := range img.env {
		set(k, v, "image")
	}
	secrets := map[string]string{}
	for _, f := range secretExamples {
		maps.Copy(secrets, readEnvFile(t, f))
	}
	// envFrom in order (a later source wins), then env, which wins over
	// all of it, as the kubelet builds the environment.
	for _, src := range list(p.container, "envFrom") {
		switch {
		case get(src, "configMapRef") != nil:
			cm := k.named("ConfigMap", str(src, "configMapRef", "name"))
			if cm == nil {
				t.Fatalf("%s: envFrom names ConfigMap %q, which kustomize did not make", k.dir, str(src, "configMapRef", "name"))
			}
			data, _ := get(cm, "data").(map[string]any)
			for key := range data {
				set(key, str(data, key), "configmap")
			}
		case get(src, "secretRef") != nil:
			if len(secrets) == 0 {
				t.Fatalf("%s: envFrom names Secret %q, and no example lists its keys", k.dir, str(src, "secretRef", "name"))
			}
			for key, v := range secrets {
				set(key, v, "secret")
			}
		}
	}
	for _, e := range list(p.container, "env") {
		name := str(e, "name")
		switch {
		case get(e, "valueFrom", "fieldRef") != nil:
			path := str(e, "valueFrom", "fieldRef", "fieldPath")
			if path != "metadata.name" {
				t.Fatalf("%s: %s from fieldRef %s: the test knows only metadata.name", k.dir, name, path)
			}
			set(name, podName, "fieldRef:"+path)
		case get(e, "valueFrom") != nil:
			t.Fatalf("%s: %s: valueFrom other than fieldRef is not understood here", k.dir, name)
		default:
			set(name, str(e, "value"), "value")
		}
	}
	// The container reads the image's default env file under its
	// environment: nothing is mounted over it and no --env-file given.
	for _, m := range list(p.container, "volumeMounts") {
		if mp := str(m, "mountPath"); mp == defaultEnvFile(t) || strings.HasPrefix(defaultEnvFile(t), strings.TrimSuffix(mp, "/")+"/") {
			t.Fatalf("%s: a volume is mounted at %s, over the image's settings: the test does not model it", k.dir, mp)
		}
	}
	p.envFile = img.envFile
	p.cfg = load(t, p.envFile, p.env)
	return p
}

// containerPort resolves a probe's or a Service's port, by name or
// number, to the container's port number; 0 when nothing matches.
func (p pod) containerPort(ref any) int {
	for _, cp := range list(p.container, "ports") {
		n, _ := strconv.Atoi(str(cp, "containerPort"))
		if str(cp, "name") == str(ref) || str(cp, "containerPort") == str(ref) {
			return n
		}
	}
	return 0
}

// subset reports whether every label of sel is on labels, and sel has one.
func subset(sel, labels any) bool {
	s, _ := sel.(map[string]any)
	l, _ := labels.(map[string]any)
	if len(s) == 0 {
		return false
	}
	for k, v := range s {
		if l[k] != v {
			return false
		}
	}
	return true
}

// checkKustomization checks a rendered lanegate Deployment, Service and
// PodDisruptionBudget against the configuration the pod loads.
func checkKustomization(t *testing.T, k kustomized, p pod) {
	t.Helper()
	img := dockerfile(t)
	podLabels := get(p.deployment, "spec", "template", "metadata", "labels")
	if !subset(get(p.deployment, "spec", "selector", "matchLabels"), podLabels) {
		t.Errorf("%s: the Deployment's selector does not match its pods", k.dir)
	}
	if image := str(p.container, "image"); !strings.HasPrefix(image, "lanegate") {
		t.Errorf("%s: image %q", k.dir, image)
	}
	if args := stringsOf(get(p.container, "args")); len(args) != 1 || args[0] != "serve" || get(p.container, "command") != nil {
		t.Errorf("%s: args %v, command %v: want the image's entrypoint with serve", k.dir, args, get(p.container, "command"))
	}
	admin, listen := port(t, p.cfg.Admin.Listen), port(t, p.cfg.Server.Listen)
	// The kubelet probes, and the Service sends to, the pod's address,
	// not its loopback.
	for _, l := range []string{p.cfg.Server.Listen, p.cfg.Admin.Listen} {
		if !allInterfaces(l) {
			t.Errorf("%s: lanegate listens on %s, inside its pod only: want all interfaces", k.dir, l)
		}
	}
	for _, pr := range []struct {
		key   string
		check func(*testing.T, string, string)
	}{{"readinessProbe", checkReadiness}, {"livenessProbe", checkLiveness}} {
		hg := get(p.container, pr.key, "httpGet")
		if hg == nil {
			t.Errorf("%s: no %s.httpGet", k.dir, pr.key)
			continue
		}
		if got := p.containerPort(get(hg, "port")); got != admin {
			t.Errorf("%s: %s on port %v (container port %d), want the admin port %d (LANEGATE_ADMIN_LISTEN=%s)",
				k.dir, pr.key, get(hg, "port"), got, admin, p.cfg.Admin.Listen)
		}
		pr.check(t, k.dir+" "+pr.key, str(hg, "path"))
	}
	svc := k.one(t, "Service")
	if !subset(get(svc, "spec", "selector"), podLabels) {
		t.Errorf("%s: the Service's selector does not match the pods", k.dir)
	}
	for _, sp := range list(svc, "spec", "ports") {
		if got := p.containerPort(get(sp, "targetPort")); got != listen {
			t.Errorf("%s: the Service sends port %s to container port %d, want LANEGATE_LISTEN's %d", k.dir, str(sp, "port"), got, listen)
		}
	}
	replicas, _ := strconv.Atoi(str(p.deployment, "spec", "replicas"))
	pdb := k.one(t, "PodDisruptionBudget")
	if !subset(get(pdb, "spec", "selector", "matchLabels"), podLabels) {
		t.Errorf("%s: the PodDisruptionBudget's selector does not match the pods", k.dir)
	}
	if minAvail, err := strconv.Atoi(str(pdb, "spec", "minAvailable")); err == nil && minAvail >= replicas {
		t.Errorf("%s: minAvailable %d of %d replicas: no node could ever be drained", k.dir, minAvail, replicas)
	}
	// Each lanegate outside fleet mode admits the whole budget.
	if replicas > 1 && p.cfg.Fleet.Mode != config.FleetRedis {
		t.Errorf("%s: %d replicas without LANEGATE_FLEET=redis admit the pool's budget %d times over", k.dir, replicas, replicas)
	}
	// The kubelet's SIGKILL comes terminationGracePeriodSeconds after
	// preStop begins: the pause, then the drain, must fit with room.
	grace, _ := strconv.Atoi(str(p.spec, "terminationGracePeriodSeconds"))
	pause, _ := strconv.Atoi(str(p.container, "lifecycle", "preStop", "sleep", "seconds"))
	if need := time.Duration(pause)*time.Second + p.cfg.Server.ShutdownTimeout + 5*time.Second; time.Duration(grace)*time.Second < need {
		t.Errorf("%s: terminationGracePeriodSeconds %d is shorter than preStop's %ds, LANEGATE_SHUTDOWN_TIMEOUT=%s and 5s to close",
			k.dir, grace, pause, p.cfg.Server.ShutdownTimeout)
	}
	// runAsNonRoot cannot be checked against a user name, which is what
	// the image's USER is.
	if _, err := strconv.Atoi(strings.Split(img.user, ":")[0]); err != nil && str(p.spec, "securityContext", "runAsNonRoot") == "true" {
		if _, err := strconv.Atoi(str(p.spec, "securityContext", "runAsUser")); err != nil {
			t.Errorf("%s: runAsNonRoot with the image's USER %q and no numeric runAsUser: the kubelet refuses to start it", k.dir, img.user)
		}
	}
}

func TestKubernetesBase(t *testing.T) {
	k := kustomize(t, "k8s/base")
	p := lanegatePod(t, k, "k8s/base/secrets.env.example")
	checkKustomization(t, k, p)
	if p.cfg.Fleet.Mode != config.FleetOff {
		t.Errorf("%s: the base is one lanegate, not a fleet", k.dir)
	}
}

func TestKubernetesFleetOverlay(t *testing.T) {
	k := kustomize(t, "k8s/overlays/fleet")
	p := lanegatePod(t, k, "k8s/base/secrets.env.example", "k8s/overlays/fleet/secrets.env.example")
	checkKustomization(t, k, p)
	if r := str(p.deployment, "spec", "replicas"); r != "3" {
		t.Errorf("%s: replicas %s, want 3", k.dir, r)
	}
	if p.cfg.Fleet.Mode != config.FleetRedis {
		t.Errorf("%s: LANEGATE_FLEET=%s, want redis", k.dir, p.cfg.Fleet.Mode)
	}
	if p.cfg.Fleet.InstanceID != podName || p.from["LANEGATE_INSTANCE_ID"] != "fieldRef:metadata.name" {
		t.Errorf("%s: LANEGATE_INSTANCE_ID from %q, want the pod's name from the downward API", k.dir, p.from["LANEGATE_INSTANCE_ID"])
	}
	// Shared by construction: every pod reads it from the one Secret.
	if p.cfg.Admission.TicketSecret == "" || p.from["LANEGATE_TICKET_SECRET"] != "secret" {
		t.Errorf("%s: LANEGATE_TICKET_SECRET from %q, want the Secret every replica reads", k.dir, p.from["LANEGATE_TICKET_SECRET"])
	}
	if p.from["LANEGATE_REDIS_URL"] != "secret" {
		t.Errorf("%s: LANEGATE_REDIS_URL from %q, want the Secret (it holds a password)", k.dir, p.from["LANEGATE_REDIS_URL"])
	}
}

// The monitoring component, added to the base: its ServiceMonitor selects
// the admin Service, which selects the base's pods by their admin port, and
// reads /metrics with the admin token from the Secret the base uses.
func TestKubernetesMonitoringComponent(t *testing.T) {
	kubectl := tool(t, "kubectl", "", "the kustomizations")
	dir := t.TempDir()
	rel := func(p string) string {
		abs, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		r, err := filepath.Rel(dir, abs)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - " + rel("k8s/base") +
		"\ncomponents:\n  - " + rel("k8s/components/monitoring") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	r := kustomized{dir: "k8s/base + k8s/components/monitoring", docs: yamlDocs(t, dir, bytes.NewReader(out))}

	sm := r.one(t, "ServiceMonitor")
	svc := r.named("Service", "lanegate-admin")
	if svc == nil {
		t.Fatalf("%s: no Service lanegate-admin", r.dir)
	}
	labels := func(m any) map[string]string {
		out := map[string]string{}
		mm, _ := m.(map[string]any)
		for k, v := range mm {
			out[k], _ = v.(string)
		}
		return out
	}
	subset := func(a, b map[string]string) bool {
		for k, v := range a {
			if b[k] != v {
				return false
			}
		}
		return len(a) > 0
	}
	if sel, have := labels(get(sm, "spec", "selector", "matchLabels")), labels(get(svc, "metadata", "labels")); !subset(sel, have) {
		t.Errorf("%s: the ServiceMonitor selects %v, the admin Service is labelled %v", r.dir, sel, have)
	}
	pods := labels(get(r.one(t, "Deployment"), "spec", "template", "metadata", "labels"))
	if sel := labels(get(svc, "spec", "selector")); !subset(sel, pods) {
		t.Errorf("%s: the admin Service selects %v, the pods are labelled %v", r.dir, sel, pods)
	}
	if s := str(svc, "spec", "clusterIP"); s != "None" {
		t.Errorf("%s: the admin Service has clusterIP %q, want None: each pod is scraped on its own", r.dir, s)
	}
	p := lanegatePod(t, r, "k8s/base/secrets.env.example")
	eps, _ := get(sm, "spec", "endpoints").([]any)
	if len(eps) != 1 {
		t.Fatalf("%s: %d ServiceMonitor endpoints, want 1", r.dir, len(eps))
	}
	ep := eps[0].(map[string]any)
	if str(ep, "port") != "admin" || str(ep, "path") != "/metrics" {
		t.Errorf("%s: the ServiceMonitor scrapes port %q path %q, want admin /metrics", r.dir, str(ep, "port"), str(ep, "path"))
	}
	ports, _ := get(svc, "spec", "ports").([]any)
	if len(ports) != 1 || str(ports[0].(map[string]any), "name") != "admin" || str(ports[0].(map[string]any), "targetPort") != "admin" {
		t.Errorf("%s: the admin Service's ports %v, want one named admin targeting the container's admin port", r.dir, ports)
	}
	if !strings.HasSuffix(p.cfg.Admin.Listen, ":"+str(ports[0].(map[string]any), "port")) {
		t.Errorf("%s: the admin Service's port %s is not lanegate's admin listener %s", r.dir, str(ports[0].(map[string]any), "port"), p.cfg.Admin.Listen)
	}
	if str(ep, "authorization", "type") != "Bearer" || str(ep, "authorization", "credentials", "key") != "LANEGATE_ADMIN_TOKEN" ||
		p.from["LANEGATE_ADMIN_TOKEN"] != "secret" || str(ep, "authorization", "credentials", "name") != "lanegate-secrets" {
		t.Errorf("%s: the ServiceMonitor's authorization %v, want the admin token from the Secret the pods read it from", r.dir, get(ep, "authorization"))
	}
}
