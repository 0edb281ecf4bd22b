package verify

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// kustomization is the only shape config/ uses: a plain list of files, and of sub-folders that
// are such a list themselves (config/broker/). Patches, generators or transformers would make
// `kubectl apply -R -f` of the files differ from `kubectl apply -k`, so any other field is a
// problem.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

// CheckKustomization checks that dir/kustomization.yaml lists exactly the manifest files of
// dir, each once, and nothing but files and direct sub-folders with a kustomization.yaml of
// their own, which is checked the same way. A directory without one yields no problems.
func CheckKustomization(dir string) []Problem {
	file := filepath.Join(dir, "kustomization.yaml")
	data, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return nil
	}
	problem := func(field, format string, args ...any) Problem {
		return Problem{File: file, Object: "Kustomization", Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if err != nil {
		return []Problem{problem("", "%v", err)}
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		return []Problem{problem("", "only apiVersion, kind and resources are allowed, so that `kubectl apply -f` of the files equals `kubectl apply -k`: %v", err)}
	}
	var problems []Problem
	listed := map[string]bool{}
	for i, r := range k.Resources {
		field := fmt.Sprintf("resources[%d]", i)
		if listed[r] {
			problems = append(problems, problem(field, "%s is listed twice", r))
		}
		listed[r] = true
		info, err := os.Stat(filepath.Join(dir, r))
		switch {
		case err == nil && !info.IsDir():
		case err == nil && isSubFolder(r) && hasKustomization(filepath.Join(dir, r)):
			problems = append(problems, CheckKustomization(filepath.Join(dir, r))...)
		default:
			problems = append(problems, problem(field, "%s is not a file in %s, nor a sub-folder with a kustomization.yaml", r, dir))
		}
	}
	var files []string
	for _, pattern := range []string{"*.yaml", "*.yml"} {
		m, _ := filepath.Glob(filepath.Join(dir, pattern))
		files = append(files, m...)
	}
	sort.Strings(files)
	for _, f := range files {
		name := filepath.Base(f)
		if name != "kustomization.yaml" && !listed[name] && !slices.Contains(k.Resources, "./"+name) {
			problems = append(problems, problem("resources", "%s is in %s but not listed, so `kubectl apply -k` would skip it", name, dir))
		}
	}
	return problems
}

// isSubFolder reports whether the resource r names a direct sub-folder ("broker" or "./broker"),
// never the folder itself or one outside it.
func isSubFolder(r string) bool {
	c := filepath.Clean(r)
	return c != "." && c != ".." && !filepath.IsAbs(c) && !strings.ContainsRune(c, filepath.Separator)
}

func hasKustomization(dir string) bool {
	info, err := os.Stat(filepath.Join(dir, "kustomization.yaml"))
	return err == nil && !info.IsDir()
}
