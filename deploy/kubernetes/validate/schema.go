package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// Schemas holds the OpenAPI schemas of the custom resources the manifests may use.
type Schemas struct {
	// scaledObject is the openAPIV3Schema of KEDA's ScaledObject, version v1alpha1.
	scaledObject map[string]any
}

// LoadScaledObjectSchema reads KEDA's ScaledObject CustomResourceDefinition.
func LoadScaledObjectSchema(path string) (Schemas, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Schemas{}, err
	}
	var crd struct {
		Spec struct {
			Group    string `json:"group"`
			Versions []struct {
				Name   string `json:"name"`
				Schema struct {
					OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &crd); err != nil {
		return Schemas{}, fmt.Errorf("%s: %w", path, err)
	}
	for _, v := range crd.Spec.Versions {
		if crd.Spec.Group == "keda.sh" && v.Name == "v1alpha1" && v.Schema.OpenAPIV3Schema != nil {
			return Schemas{scaledObject: v.Schema.OpenAPIV3Schema}, nil
		}
	}
	return Schemas{}, fmt.Errorf("%s: no keda.sh/v1alpha1 schema", path)
}

// CheckScaledObject checks a ScaledObject: its metadata strictly decoded as Kubernetes
// object metadata, the rest against KEDA's schema, unknown fields refused.
func (s Schemas) CheckScaledObject(data []byte) error {
	if s.scaledObject == nil {
		return fmt.Errorf("a ScaledObject needs --keda-crd to be checked")
	}
	asJSON, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return err
	}
	var object map[string]any
	if err := json.Unmarshal(asJSON, &object); err != nil {
		return err
	}
	metadata, err := json.Marshal(object["metadata"])
	if err != nil {
		return err
	}
	if _, err := strict[metav1.ObjectMeta](metadata); err != nil {
		return fmt.Errorf("metadata: %w", err)
	}
	delete(object, "metadata")
	if problems := walk(s.scaledObject, object, ""); len(problems) > 0 {
		return fmt.Errorf("%v", problems)
	}
	return nil
}

// walk checks value against an OpenAPI v3 schema of a CustomResourceDefinition (types,
// required and unknown fields, enums), saying where each problem is.
func walk(schema map[string]any, value any, path string) []string {
	at := func(format string, args ...any) []string {
		where := path
		if where == "" {
			where = "(the object)"
		}
		return []string{where + ": " + fmt.Sprintf(format, args...)}
	}
	if on, _ := schema["x-kubernetes-int-or-string"].(bool); on {
		switch value.(type) {
		case string, float64:
			return nil
		}
		return at("wants an integer or a string")
	}
	var problems []string
	switch schema["type"] {
	case "object":
		object, ok := value.(map[string]any)
		if !ok {
			return at("wants an object")
		}
		properties, _ := schema["properties"].(map[string]any)
		required, _ := schema["required"].([]any)
		for _, r := range required {
			if _, ok := object[r.(string)]; !ok {
				problems = append(problems, at("%q is required", r)...)
			}
		}
		additional, _ := schema["additionalProperties"].(map[string]any)
		preserve, _ := schema["x-kubernetes-preserve-unknown-fields"].(bool)
		keys := make([]string, 0, len(object))
		for k := range object {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			inner := path + "." + k
			if path == "" {
				inner = k
			}
			if p, ok := properties[k].(map[string]any); ok {
				problems = append(problems, walk(p, object[k], inner)...)
			} else if additional != nil {
				problems = append(problems, walk(additional, object[k], inner)...)
			} else if !preserve {
				problems = append(problems, fmt.Sprintf("%s: unknown field", inner))
			}
		}
	case "array":
		list, ok := value.([]any)
		if !ok {
			return at("wants an array")
		}
		items, _ := schema["items"].(map[string]any)
		for i, item := range list {
			problems = append(problems, walk(items, item, fmt.Sprintf("%s[%d]", path, i))...)
		}
	case "string":
		text, ok := value.(string)
		if !ok {
			return at("wants a string")
		}
		if enum, ok := schema["enum"].([]any); ok && !contains(enum, text) {
			return at("%q is not one of %v", text, enum)
		}
	case "integer":
		number, ok := value.(float64)
		if !ok || number != math.Trunc(number) {
			return at("wants an integer")
		}
	case "number":
		if _, ok := value.(float64); !ok {
			return at("wants a number")
		}
	case "boolean":
		if _, ok := value.(bool); !ok {
			return at("wants true or false")
		}
	}
	return problems
}

func contains(list []any, text string) bool {
	for _, v := range list {
		if v == text {
			return true
		}
	}
	return false
}
