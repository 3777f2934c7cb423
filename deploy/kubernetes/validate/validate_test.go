package main

import (
	"os"
	"strings"
	"testing"
)

// schemas reads KEDA's ScaledObject CRD from $KEDA_CRD (scripts/k8s-check.sh sets it).
func schemas(t *testing.T) Schemas {
	t.Helper()
	path := os.Getenv("KEDA_CRD")
	if path == "" {
		t.Fatal("KEDA_CRD names KEDA's ScaledObject CRD; run scripts/k8s-check.sh, which sets it")
	}
	s, err := LoadScaledObjectSchema(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTheShippedOverlaysAreValid(t *testing.T) {
	s := schemas(t)
	for _, dir := range []string{"../overlays/example", "../overlays/example-keda"} {
		objects, problems := Check(dir, s)
		if len(problems) > 0 {
			t.Errorf("%s: %v", dir, problems)
		}
		if len(objects) < 10 {
			t.Errorf("%s: only %d objects: %v", dir, len(objects), objects)
		}
	}
}

// Each broken manifest is caught, and the problem names what is wrong.
func TestBrokenManifestsAreCaught(t *testing.T) {
	s := schemas(t)
	cases := map[string]string{
		"field-misspelt":      `Deployment/order-service: error unmarshaling JSON: while decoding JSON: json: unknown field "readinesProbe"`,
		"wrong-type":          "Deployment/payment-service: error unmarshaling JSON: while decoding JSON: json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32",
		"short-grace":         "terminationGracePeriodSeconds 30 is not above the drain (10 s), the shutdown bound (20 s)",
		"no-startup-probe":    "Deployment payment-service: container payment-service: no startup probe",
		"readiness-on-live":   "its readiness probe does not ask /health/ready",
		"writable-root":       "the root filesystem is not read-only",
		"no-budget":           "Deployment payment-service: no PodDisruptionBudget selects its pods",
		"keda-field-misspelt": "spec.maxReplicas: unknown field",
		"unknown-kind":        "no known type for networking.k8s.io/v1 Ingress",
	}
	for dir, want := range cases {
		t.Run(dir, func(t *testing.T) {
			_, problems := Check("testdata/"+dir, s)
			all := strings.Join(problems, "\n")
			if !strings.Contains(all, want) {
				t.Errorf("want a problem containing %q, got:\n%s", want, all)
			}
		})
	}
}
