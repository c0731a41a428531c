// Command check decodes every object of a rendered Helm chart (`helm template` output, on stdin
// or in the files named as arguments) strictly into the real API types: Kubernetes' own
// (k8s.io/api), KEDA's and prometheus-operator's. An unknown field, a misspelt one, a value of
// the wrong type or an object kind it does not know fails the check (exit 1), naming the object.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// The kinds the chart may render, by apiVersion and kind.
func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + "/" + kind {
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1/Secret":
		return &corev1.Secret{}, nil
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, nil
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "keda.sh/v1alpha1/ScaledObject":
		return &kedav1alpha1.ScaledObject{}, nil
	case "keda.sh/v1alpha1/TriggerAuthentication":
		return &kedav1alpha1.TriggerAuthentication{}, nil
	case "monitoring.coreos.com/v1/PodMonitor":
		return &monitoringv1.PodMonitor{}, nil
	case "monitoring.coreos.com/v1/PrometheusRule":
		return &monitoringv1.PrometheusRule{}, nil
	}
	return nil, fmt.Errorf("unknown kind %s %s (add it to deploy/helm/check if the chart renders it on purpose)", apiVersion, kind)
}

// Checks beyond the schema that the owners of the types ship as functions.
func semantic(obj any) error {
	switch o := obj.(type) {
	case *kedav1alpha1.ScaledObject:
		if err := kedav1alpha1.CheckReplicaCountBoundsAreValid(o); err != nil {
			return err
		}
		return kedav1alpha1.CheckFallbackValid(o)
	case *appsv1.Deployment:
		if o.Spec.Template.Spec.TerminationGracePeriodSeconds == nil {
			return errors.New("no terminationGracePeriodSeconds")
		}
	}
	return nil
}

func checkStream(name string, r io.Reader) (int, []error) {
	var errs []error
	count := 0
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	for {
		doc, err := reader.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return count, append(errs, fmt.Errorf("%s: %w", name, err))
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		var meta struct {
			metav1.TypeMeta   `json:",inline"`
			metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			errs = append(errs, fmt.Errorf("%s: not a YAML object: %w", name, err))
			continue
		}
		what := fmt.Sprintf("%s %s/%s", name, meta.Kind, meta.Name)
		obj, err := newObject(meta.APIVersion, meta.Kind)
		if err == nil {
			err = yaml.UnmarshalStrict(doc, obj)
		}
		if err == nil {
			err = semantic(obj)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
			continue
		}
		count++
		fmt.Printf("ok %s %s\n", meta.APIVersion, what)
	}
	return count, errs
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func main() {
	var errs []error
	total := 0
	if len(os.Args) < 2 {
		n, e := checkStream("stdin", os.Stdin)
		total, errs = n, e
	}
	for _, path := range os.Args[1:] {
		f, err := os.Open(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		n, e := checkStream(path, f)
		f.Close()
		total += n
		errs = append(errs, e...)
	}
	for _, err := range errs {
		fmt.Fprintln(os.Stderr, "FAIL", err)
	}
	if len(errs) > 0 || total == 0 {
		fmt.Fprintf(os.Stderr, "%d objects decoded, %d failed\n", total, len(errs))
		os.Exit(1)
	}
	fmt.Printf("%d objects decoded strictly\n", total)
}
