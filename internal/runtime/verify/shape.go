package verify

import (
	"fmt"
	"net/url"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/knfaas/knfaas/internal/runtime/manifest"
)

// checkServiceShape holds a function's Knative Service (one with a ko:// image) to the shape
// every knfaas function shares: scale bounds, resources, func-go's health endpoints, the listen
// address, no password in a plain env value, a restricted securityContext and the
// app.kubernetes.io labels. The API server cannot
// check this (Pod Security does not look into Knative Services), and a cluster would run a
// function without it, only less safely.
func (c *checker) checkServiceShape(o *manifest.Object, svc *servingv1.Service) {
	tmpl := svc.Spec.Template
	for _, key := range []string{"autoscaling.knative.dev/min-scale", "autoscaling.knative.dev/max-scale"} {
		if _, ok := tmpl.Annotations[key]; !ok {
			c.report(o, "spec.template.metadata.annotations["+key+"]", "missing: every function states its scale bounds")
		}
	}
	// part-of is knfaas for the platform, the example's name for an example.
	for _, key := range []string{"app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of"} {
		if svc.Labels[key] == "" {
			c.report(o, "metadata.labels["+key+"]", "missing")
		}
	}
	pod := tmpl.Spec.PodSpec
	for i, ctr := range pod.Containers {
		base := fmt.Sprintf("spec.template.spec.containers[%d]", i)
		if len(ctr.Resources.Requests) == 0 {
			c.report(o, base+".resources.requests", "missing: the scheduler needs cpu and memory requests")
		}
		if _, ok := ctr.Resources.Limits[corev1.ResourceMemory]; !ok {
			c.report(o, base+".resources.limits.memory", "missing: a leaking function must not take the node's memory")
		}
		checkProbe(c, o, base+".readinessProbe", ctr.ReadinessProbe, "/health/readiness")
		checkProbe(c, o, base+".livenessProbe", ctr.LivenessProbe, "/health/liveness")
		if !slices.ContainsFunc(ctr.Env, func(e corev1.EnvVar) bool { return e.Name == "LISTEN_ADDRESS" }) {
			c.report(o, base+".env", `LISTEN_ADDRESS is not set (func-go listens on it; the ksvc sets "[::]:8080")`)
		}
		for j, env := range ctr.Env {
			if u, err := url.Parse(env.Value); err == nil && u.User != nil {
				if _, hasPassword := u.User.Password(); hasPassword {
					c.report(o, fmt.Sprintf("%s.env[%d].value", base, j), "%s carries a password in plain text; take it from a Secret with valueFrom.secretKeyRef", env.Name)
				}
			}
		}
		c.checkSecurityContext(o, base+".securityContext", pod.SecurityContext, ctr.SecurityContext)
	}
}

func checkProbe(c *checker, o *manifest.Object, field string, p *corev1.Probe, path string) {
	if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path {
		c.report(o, field, "must be httpGet %s (func-go serves it)", path)
	}
}

// checkSecurityContext requires Pod Security "restricted" plus a read-only root filesystem; a
// container setting overrides the pod's, as in Kubernetes.
func (c *checker) checkSecurityContext(o *manifest.Object, field string, pod *corev1.PodSecurityContext, ctr *corev1.SecurityContext) {
	if ctr == nil {
		ctr = &corev1.SecurityContext{}
	}
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	runAsNonRoot := ctr.RunAsNonRoot
	if runAsNonRoot == nil {
		runAsNonRoot = pod.RunAsNonRoot
	}
	if !isTrue(runAsNonRoot) {
		c.report(o, field+".runAsNonRoot", "must be true")
	}
	if !isTrue(ctr.ReadOnlyRootFilesystem) {
		c.report(o, field+".readOnlyRootFilesystem", "must be true")
	}
	if ctr.AllowPrivilegeEscalation == nil || *ctr.AllowPrivilegeEscalation {
		c.report(o, field+".allowPrivilegeEscalation", "must be false")
	}
	if ctr.Capabilities == nil || !slices.ContainsFunc(ctr.Capabilities.Drop, func(c corev1.Capability) bool { return strings.EqualFold(string(c), "ALL") }) || len(ctr.Capabilities.Add) > 0 {
		c.report(o, field+".capabilities", `must drop ["ALL"] and add nothing`)
	}
	seccomp := ctr.SeccompProfile
	if seccomp == nil {
		seccomp = pod.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		c.report(o, field+".seccompProfile.type", "must be RuntimeDefault")
	}
}
