package main

import (
	"fmt"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// poolCloseSeconds is the services' bound on closing the database pool after shutdown.
const poolCloseSeconds = 5

// The services' defaults, when neither the container nor the ConfigMap sets them.
const (
	defaultDrainSeconds    = 5
	defaultShutdownSeconds = 20
)

// built holds the decoded objects the platform rules look at.
type built struct {
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	budgets     []*policyv1.PodDisruptionBudget
	configMaps  []*corev1.ConfigMap
}

// Check builds the kustomization in dir and checks every object it produces; it returns
// the objects that passed and every problem found.
func Check(dir string, schemas Schemas) (objects, problems []string) {
	kustomizer := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resources, err := kustomizer.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, []string{fmt.Sprintf("kustomize build: %v", err)}
	}
	var b built
	for _, r := range resources.Resources() {
		name := fmt.Sprintf("%s %s/%s", r.GetApiVersion(), r.GetKind(), r.GetName())
		data, err := r.AsYAML()
		if err == nil {
			err = b.decode(r.GetApiVersion(), r.GetKind(), data, schemas)
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		objects = append(objects, name)
	}
	if len(objects) == 0 {
		problems = append(problems, "the build produced no object")
	}
	return objects, append(problems, b.platformRules()...)
}

// strict decodes data into a T, refusing unknown and duplicated fields.
func strict[T any](data []byte) (*T, error) {
	var v T
	if err := yaml.UnmarshalStrict(data, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

func keep[T any](list *[]*T, v *T, err error) error {
	if err == nil {
		*list = append(*list, v)
	}
	return err
}

func (b *built) decode(apiVersion, kind string, data []byte, schemas Schemas) error {
	var err error
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		_, err = strict[corev1.Namespace](data)
	case "v1 Secret":
		_, err = strict[corev1.Secret](data)
	case "v1 ConfigMap":
		v, e := strict[corev1.ConfigMap](data)
		err = keep(&b.configMaps, v, e)
	case "v1 Service":
		v, e := strict[corev1.Service](data)
		err = keep(&b.services, v, e)
	case "apps/v1 Deployment":
		v, e := strict[appsv1.Deployment](data)
		err = keep(&b.deployments, v, e)
	case "policy/v1 PodDisruptionBudget":
		v, e := strict[policyv1.PodDisruptionBudget](data)
		err = keep(&b.budgets, v, e)
	case "autoscaling/v2 HorizontalPodAutoscaler":
		_, err = strict[autoscalingv2.HorizontalPodAutoscaler](data)
	case "keda.sh/v1alpha1 ScaledObject":
		err = schemas.CheckScaledObject(data)
	default:
		err = fmt.Errorf("no known type for %s %s: add it to the validator", apiVersion, kind)
	}
	return err
}

// platformRules are what this platform needs of each Deployment.
func (b *built) platformRules() []string {
	var problems []string
	for _, d := range b.deployments {
		say := func(format string, args ...any) {
			problems = append(problems, fmt.Sprintf("Deployment %s: ", d.Name)+fmt.Sprintf(format, args...))
		}
		pod := d.Spec.Template
		if d.Spec.Selector == nil {
			say("no selector")
			continue
		}
		selector, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil || !selector.Matches(labels.Set(pod.Labels)) {
			say("its selector does not select its own pods")
		}
		if !b.hasBudget(pod.Labels) {
			say("no PodDisruptionBudget selects its pods")
		}
		if !b.hasService(pod.Labels) {
			say("no Service selects its pods")
		}
		if s := pod.Spec.SecurityContext; s == nil || s.RunAsNonRoot == nil || !*s.RunAsNonRoot {
			say("the pod does not set runAsNonRoot: true")
		}
		for _, c := range pod.Spec.Containers {
			for _, p := range b.containerRules(d, c) {
				say("container %s: %s", c.Name, p)
			}
		}
	}
	return problems
}

func (b *built) containerRules(d *appsv1.Deployment, c corev1.Container) []string {
	var problems []string
	probe := func(what string, p *corev1.Probe, path string) {
		switch {
		case p == nil:
			problems = append(problems, "no "+what+" probe")
		case p.HTTPGet == nil || p.HTTPGet.Path != path:
			problems = append(problems, fmt.Sprintf("its %s probe does not ask %s", what, path))
		}
	}
	probe("startup", c.StartupProbe, "/health/live")
	probe("liveness", c.LivenessProbe, "/health/live")
	probe("readiness", c.ReadinessProbe, "/health/ready")
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[name]; !ok {
			problems = append(problems, fmt.Sprintf("no %s request", name))
		}
		if _, ok := c.Resources.Limits[name]; !ok {
			problems = append(problems, fmt.Sprintf("no %s limit", name))
		}
	}
	s := c.SecurityContext
	if s == nil || s.ReadOnlyRootFilesystem == nil || !*s.ReadOnlyRootFilesystem {
		problems = append(problems, "the root filesystem is not read-only")
	}
	if s == nil || s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation {
		problems = append(problems, "privilege escalation is not refused")
	}
	prefix := strings.ToUpper(strings.TrimSuffix(d.Name, "-service")) + "_"
	drain := b.setting(c, prefix+"SHUTDOWN_DRAIN_SECS", defaultDrainSeconds)
	bound := b.setting(c, prefix+"SHUTDOWN_TIMEOUT_SECS", defaultShutdownSeconds)
	need := drain + bound + poolCloseSeconds
	grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if g := d.Spec.Template.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = *g
	}
	if grace <= need {
		problems = append(problems, fmt.Sprintf(
			"terminationGracePeriodSeconds %d is not above the drain (%d s), the shutdown bound (%d s) and closing the pool (%d s)",
			grace, drain, bound, poolCloseSeconds))
	}
	return problems
}

// setting is a variable's value in seconds: from the container's env, else from a
// ConfigMap it takes its env from, else def.
func (b *built) setting(c corev1.Container, name string, def int64) int64 {
	for _, e := range c.Env {
		if e.Name == name {
			if n, err := strconv.ParseInt(e.Value, 10, 64); err == nil {
				return n
			}
		}
	}
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef == nil {
			continue
		}
		for _, cm := range b.configMaps {
			if cm.Name != from.ConfigMapRef.Name {
				continue
			}
			if n, err := strconv.ParseInt(cm.Data[name], 10, 64); err == nil {
				return n
			}
		}
	}
	return def
}

func (b *built) hasBudget(pod map[string]string) bool {
	for _, budget := range b.budgets {
		selector, err := metav1.LabelSelectorAsSelector(budget.Spec.Selector)
		if err == nil && !selector.Empty() && selector.Matches(labels.Set(pod)) {
			return true
		}
	}
	return false
}

func (b *built) hasService(pod map[string]string) bool {
	for _, service := range b.services {
		selector := labels.SelectorFromSet(service.Spec.Selector)
		if len(service.Spec.Selector) > 0 && selector.Matches(labels.Set(pod)) {
			return true
		}
	}
	return false
}
