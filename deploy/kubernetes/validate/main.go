// Command validate builds kustomizations the way `kustomize build` does and checks every
// object they produce, with no cluster:
//
//   - strict decoding against the official Kubernetes API types (k8s.io/api): an unknown
//     or duplicated field, or a value of the wrong type, is an error;
//   - a KEDA ScaledObject against the schema of KEDA's own CustomResourceDefinition
//     (--keda-crd), unknown fields refused likewise;
//   - what this platform needs of its Deployments: startup, liveness and readiness
//     probes; CPU and memory requests and limits; a non-root user and a read-only root
//     filesystem; a termination grace period above the drain and the shutdown bound the
//     ConfigMap gives; a PodDisruptionBudget and a Service for each.
//
// Usage: validate [--keda-crd FILE] DIR...
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	crd := flag.String("keda-crd", "", "KEDA's ScaledObject CustomResourceDefinition (YAML); required when a ScaledObject is built")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: validate [--keda-crd FILE] DIR...\n\nBuilds each kustomization DIR and checks every object it produces.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	var schemas Schemas
	if *crd != "" {
		var err error
		if schemas, err = LoadScaledObjectSchema(*crd); err != nil {
			fmt.Fprintf(os.Stderr, "validate: %v\n", err)
			os.Exit(2)
		}
	}
	failed := false
	for _, dir := range flag.Args() {
		objects, problems := Check(dir, schemas)
		for _, o := range objects {
			fmt.Printf("%s: %s ok\n", dir, o)
		}
		for _, p := range problems {
			fmt.Printf("%s: %s\n", dir, p)
		}
		if len(problems) > 0 {
			failed = true
			fmt.Printf("%s: %d problem(s)\n", dir, len(problems))
		} else {
			fmt.Printf("%s: %d objects, all valid\n", dir, len(objects))
		}
	}
	if failed {
		os.Exit(1)
	}
}
