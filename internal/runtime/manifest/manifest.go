// Package manifest loads Kubernetes and Knative YAML strictly into their Go types, with Knative's
// own defaults and validation applied, and resolves the references between them (env, volumes,
// Destination refs) for verify and knfaas up alike.
package manifest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	eventingconfig "knative.dev/eventing/pkg/apis/config"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/apis/feature"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
	"knative.dev/pkg/apis"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/yaml"
)

// DefaultNamespace is the namespace of objects that do not name one, as kubectl's default context.
const DefaultNamespace = "default"

// Object is one document of a manifest file, decoded into its Go type.
type Object struct {
	// File is the path the document was read from, as found under the given paths.
	File string
	// Doc is the 1-based index of the document within File.
	Doc        int
	APIVersion string
	Kind       string
	Namespace  string
	Name       string
	// Obj is the typed object: *servingv1.Service, *eventingv1.Broker, *eventingv1.Trigger,
	// *sourcesv1.PingSource, *sourcesv1.SinkBinding, *corev1.ConfigMap, *corev1.Secret, or any
	// other built-in Kubernetes type.
	Obj runtime.Object
}

// Ref names the object for messages: "Service knfaas/webhook".
func (o Object) Ref() string { return fmt.Sprintf("%s %s/%s", o.Kind, o.Namespace, o.Name) }

// Where names file, document and object for messages.
func (o Object) Where() string { return fmt.Sprintf("%s (document %d): %s", o.File, o.Doc, o.Ref()) }

// Set is every object loaded from a list of paths.
type Set struct {
	Objects []Object
}

// Error is a problem with one document; Load joins them so that every problem is reported.
type Error struct {
	File string
	Doc  int
	// Object is "Kind namespace/name" when known.
	Object string
	Err    error
}

func (e *Error) Error() string {
	where := e.File
	if e.Doc > 0 {
		where = fmt.Sprintf("%s (document %d)", e.File, e.Doc)
	}
	if e.Object != "" {
		where += ": " + e.Object
	}
	return where + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// clusterBrokerDefaults is the config-br-defaults ConfigMap data that a Knative Eventing release
// installs: Brokers without a class or delivery get these, locally as on a fresh cluster.
const clusterBrokerDefaults = `clusterDefault:
  brokerClass: MTChannelBasedBroker
  apiVersion: v1
  kind: ConfigMap
  name: config-br-default-channel
  namespace: knative-eventing
  delivery:
    retry: 10
    backoffPolicy: exponential
    backoffDelay: PT0.2S
`

var brokerDefaults = func() *eventingconfig.Defaults {
	d, err := eventingconfig.NewDefaultsConfigFromMap(map[string]string{"default-br-config": clusterBrokerDefaults})
	if err != nil {
		panic(fmt.Sprintf("parsing built-in broker defaults: %v", err))
	}
	return d
}()

var (
	scheme = runtime.NewScheme()
	codecs serializer.CodecFactory
)

func init() {
	for _, add := range []func(*runtime.Scheme) error{
		clientgoscheme.AddToScheme, servingv1.AddToScheme, eventingv1.AddToScheme, sourcesv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			panic(fmt.Sprintf("building manifest scheme: %v", err))
		}
	}
	codecs = serializer.NewCodecFactory(scheme, serializer.EnableStrict)
}

// Load reads every *.yaml / *.yml file under paths (files or folders, recursively; folders named
// testdata or functions and files named kustomization.yaml are skipped), decodes each document
// strictly into its Go type, applies Knative's SetDefaults and Validate, and returns the set. All
// problems are returned together, each naming file, document, object and field.
func Load(paths ...string) (*Set, error) {
	files, err := yamlFiles(paths)
	if err != nil {
		return nil, err
	}
	set := &Set{}
	var errs []error
	for _, f := range files {
		objs, ferrs := loadFile(f)
		set.Objects = append(set.Objects, objs...)
		errs = append(errs, ferrs...)
	}
	errs = append(errs, set.checkDuplicates()...)
	return set, errors.Join(errs...)
}

func yamlFiles(paths []string) ([]string, error) {
	var files []string
	seen := map[string]bool{}
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("reading manifests: %w", err)
		}
		if !info.IsDir() {
			if !seen[p] {
				files, seen[p] = append(files, p), true
			}
			continue
		}
		var found []string
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				if path != p && (d.Name() == "testdata" || d.Name() == "functions" || strings.HasPrefix(d.Name(), ".")) {
					return filepath.SkipDir
				}
				return nil
			}
			ext := filepath.Ext(path)
			if (ext == ".yaml" || ext == ".yml") && d.Name() != "kustomization.yaml" && d.Name() != "kustomization.yml" {
				found = append(found, path)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("reading manifests under %s: %w", p, err)
		}
		sort.Strings(found)
		for _, f := range found {
			if !seen[f] {
				files, seen[f] = append(files, f), true
			}
		}
	}
	return files, nil
}

func loadFile(file string) ([]Object, []error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, []error{&Error{File: file, Err: err}}
	}
	return Decode(file, data)
}

// Decode decodes every document of data, which was read from file (used in messages only).
func Decode(file string, data []byte) ([]Object, []error) {
	var objs []Object
	var errs []error
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; ; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, &Error{File: file, Doc: doc, Err: fmt.Errorf("reading YAML: %w", err)})
			break
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			doc--
			continue
		}
		obj, err := decodeDocument(file, doc, raw)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		objs = append(objs, obj)
	}
	return objs, errs
}

func stripComments(raw []byte) []byte {
	var out bytes.Buffer
	for _, line := range bytes.Split(raw, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' && !bytes.Equal(t, []byte("---")) {
			out.Write(line)
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}

type typeAndMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

func decodeDocument(file string, doc int, raw []byte) (Object, error) {
	var head typeAndMeta
	if err := yaml.Unmarshal(raw, &head); err != nil {
		return Object{}, &Error{File: file, Doc: doc, Err: fmt.Errorf("invalid YAML: %w", err)}
	}
	o := Object{File: file, Doc: doc, APIVersion: head.APIVersion, Kind: head.Kind, Name: head.Metadata.Name, Namespace: head.Metadata.Namespace}
	fail := func(err error) (Object, error) {
		return o, &Error{File: file, Doc: doc, Object: o.Ref(), Err: err}
	}
	switch {
	case head.APIVersion == "":
		return fail(errors.New("missing field apiVersion"))
	case head.Kind == "":
		return fail(errors.New("missing field kind"))
	case head.Metadata.Name == "":
		return fail(errors.New("missing field metadata.name"))
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	gv, err := schema.ParseGroupVersion(head.APIVersion)
	if err != nil {
		return fail(fmt.Errorf("field apiVersion: %w", err))
	}
	gvk := gv.WithKind(head.Kind)
	if !scheme.Recognizes(gvk) {
		return fail(fmt.Errorf("unknown kind %q in apiVersion %q (not a Kubernetes or Knative type this tool knows)", head.Kind, head.APIVersion))
	}
	obj, _, err := codecs.UniversalDeserializer().Decode(raw, &gvk, nil)
	if err != nil {
		return fail(strictMessage(err))
	}
	o.Obj = obj
	if meta, ok := obj.(interface{ SetNamespace(string) }); ok && head.Metadata.Namespace == "" && isNamespaced(head.Kind) {
		meta.SetNamespace(o.Namespace)
	}
	if err := defaultAndValidate(obj); err != nil {
		return fail(err)
	}
	return o, nil
}

// strictMessage turns apimachinery's strict decoding error into a message naming the field.
func strictMessage(err error) error {
	if runtime.IsStrictDecodingError(err) {
		var sde interface{ Errors() []error }
		if errors.As(err, &sde) {
			var msgs []string
			for _, e := range sde.Errors() {
				msgs = append(msgs, e.Error())
			}
			return fmt.Errorf("%s: %w", strings.Join(msgs, "; "), err)
		}
	}
	return err
}

func isNamespaced(kind string) bool {
	switch kind {
	case "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume", "StorageClass", "PriorityClass":
		return false
	}
	return true
}

// defaultAndValidate applies Knative's SetDefaults and Validate, as its admission webhooks do
// when an object is created.
func defaultAndValidate(obj runtime.Object) error {
	ctx := eventingconfig.ToContext(apis.WithinCreate(context.Background()), &eventingconfig.Config{Defaults: brokerDefaults})
	// Eventing's feature flags as a fresh install sets them (config-features): delivery.timeout
	// is enabled there, so it is here.
	ctx = feature.ToContext(ctx, feature.FromContextOrDefaults(ctx))
	if d, ok := obj.(apis.Defaultable); ok {
		d.SetDefaults(ctx)
	}
	if v, ok := obj.(apis.Validatable); ok {
		if fe := v.Validate(ctx); fe != nil {
			if err := fe.Filter(apis.ErrorLevel); err != nil {
				return fmt.Errorf("invalid: %w", err)
			}
		}
	}
	return nil
}

func (s *Set) checkDuplicates() []error {
	seen := map[string]Object{}
	var errs []error
	for _, o := range s.Objects {
		key := o.APIVersion + "/" + o.Ref()
		if prev, ok := seen[key]; ok {
			errs = append(errs, &Error{File: o.File, Doc: o.Doc, Object: o.Ref(), Err: fmt.Errorf("defined twice (also in %s document %d)", prev.File, prev.Doc)})
			continue
		}
		seen[key] = o
	}
	return errs
}

// Services returns the Knative Services.
func (s *Set) Services() []*servingv1.Service { return typed[*servingv1.Service](s) }

// Brokers returns the Brokers.
func (s *Set) Brokers() []*eventingv1.Broker { return typed[*eventingv1.Broker](s) }

// Triggers returns the Triggers.
func (s *Set) Triggers() []*eventingv1.Trigger { return typed[*eventingv1.Trigger](s) }

// PingSources returns the PingSources.
func (s *Set) PingSources() []*sourcesv1.PingSource { return typed[*sourcesv1.PingSource](s) }

// SinkBindings returns the SinkBindings.
func (s *Set) SinkBindings() []*sourcesv1.SinkBinding { return typed[*sourcesv1.SinkBinding](s) }

// ConfigMap returns the named ConfigMap, or nil.
func (s *Set) ConfigMap(namespace, name string) *corev1.ConfigMap {
	for _, cm := range typed[*corev1.ConfigMap](s) {
		if cm.Namespace == namespace && cm.Name == name {
			return cm
		}
	}
	return nil
}

// Secret returns the named Secret, or nil.
func (s *Set) Secret(namespace, name string) *corev1.Secret {
	for _, sec := range typed[*corev1.Secret](s) {
		if sec.Namespace == namespace && sec.Name == name {
			return sec
		}
	}
	return nil
}

// KubeServices returns the core/v1 Services (not Knative Services).
func (s *Set) KubeServices() []*corev1.Service { return typed[*corev1.Service](s) }

// Find returns the object of kind (e.g. "Service" with apiVersion prefix "serving.knative.dev")
// named namespace/name, or nil.
func (s *Set) Find(apiGroup, kind, namespace, name string) *Object {
	for i, o := range s.Objects {
		if o.Kind == kind && o.Namespace == namespace && o.Name == name && groupOf(o.APIVersion) == apiGroup {
			return &s.Objects[i]
		}
	}
	return nil
}

// Origin returns the object that holds obj, for messages.
func (s *Set) Origin(obj runtime.Object) *Object {
	for i, o := range s.Objects {
		if o.Obj == obj {
			return &s.Objects[i]
		}
	}
	return nil
}

func groupOf(apiVersion string) string {
	if i := strings.Index(apiVersion, "/"); i >= 0 {
		return apiVersion[:i]
	}
	return ""
}

func typed[T runtime.Object](s *Set) []T {
	var out []T
	for _, o := range s.Objects {
		if t, ok := o.Obj.(T); ok {
			out = append(out, t)
		}
	}
	return out
}
