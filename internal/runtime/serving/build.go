package serving

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// KoPrefix marks an image that ko builds from a Go import path.
const KoPrefix = "ko://"

// Builder turns ko:// image references into local binaries with `go build`, caching each
// binary under a key made from the content of every non-standard-library source file it
// depends on, so an unchanged function is not built again.
type Builder struct {
	// Dir is the module directory `go` runs in.
	Dir string
	// CacheDir holds built binaries.
	CacheDir string
}

// EnvRace, set to 1, builds binaries with the race detector: the test suite sets it for its
// end-to-end pass, so that the runtime and the functions it runs report data races in their
// logs. Such builds need cgo and are cached apart from the others.
const EnvRace = "KNFAAS_RACE"

// Race reports whether EnvRace asks for race-detector builds.
func Race() bool { return os.Getenv(EnvRace) == "1" }

// Built is one binary.
type Built struct {
	ImportPath string
	Binary     string
	// Cached is true when the binary came from the cache.
	Cached bool
}

// ImportPath returns the import path of a ko:// image, or an error naming the image when it
// is not a ko:// reference.
func ImportPath(image string) (string, error) {
	if !strings.HasPrefix(image, KoPrefix) {
		return "", fmt.Errorf("image %q cannot run locally: knfaas up runs only ko:// images (ko://<Go import path>), which it builds with go build", image)
	}
	p := strings.TrimPrefix(image, KoPrefix)
	if p == "" {
		return "", fmt.Errorf("image %q names no import path", image)
	}
	return p, nil
}

type listedPackage struct {
	ImportPath string
	Dir        string
	Name       string
	Standard   bool
	GoFiles    []string
	CgoFiles   []string
	EmbedFiles []string
	Deps       []string
	Error      *struct{ Err string }
}

// Build builds every import path, returning binaries in the same order.
func (b *Builder) Build(ctx context.Context, importPaths []string) ([]Built, error) {
	if len(importPaths) == 0 {
		return nil, nil
	}
	env, buildFlags := buildSettings(Race())
	pkgs, err := b.list(ctx, env, importPaths)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(b.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating build cache: %w", err)
	}
	goVersion, err := exec.CommandContext(ctx, "go", "env", "GOVERSION").Output()
	if err != nil {
		return nil, fmt.Errorf("reading go version: %w", err)
	}
	out := make([]Built, len(importPaths))
	var toBuild []int
	for i, ip := range importPaths {
		p, ok := pkgs[ip]
		if !ok {
			return nil, fmt.Errorf("building %s: go list did not report the package", ip)
		}
		if p.Error != nil {
			return nil, fmt.Errorf("building %s: %s", ip, p.Error.Err)
		}
		if p.Name != "main" {
			return nil, fmt.Errorf("building %s: package %s is not a main package", ip, p.Name)
		}
		key, err := contentKey(goVersion, buildFlags, p, pkgs)
		if err != nil {
			return nil, fmt.Errorf("hashing sources of %s: %w", ip, err)
		}
		bin := filepath.Join(b.CacheDir, filepath.Base(ip)+"-"+key)
		out[i] = Built{ImportPath: ip, Binary: bin}
		if _, err := os.Stat(bin); err == nil {
			out[i].Cached = true
			continue
		}
		toBuild = append(toBuild, i)
	}
	for _, i := range toBuild {
		tmp := out[i].Binary + ".tmp"
		args := append(append([]string{"build"}, buildFlags...), "-o", tmp, out[i].ImportPath)
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = b.Dir
		cmd.Env = env
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("building %s: %w: %s", out[i].ImportPath, err, strings.TrimSpace(stderr.String()))
		}
		if err := os.Rename(tmp, out[i].Binary); err != nil {
			return nil, fmt.Errorf("building %s: %w", out[i].ImportPath, err)
		}
	}
	return out, nil
}

// buildSettings returns the environment and flags of go list and go build: static, stripped
// binaries, or with the race detector, which needs cgo (and keeps symbols for its reports).
func buildSettings(race bool) (env, flags []string) {
	if race {
		return append(os.Environ(), "CGO_ENABLED=1"), []string{"-trimpath", "-race"}
	}
	return append(os.Environ(), "CGO_ENABLED=0"), []string{"-trimpath", "-ldflags=-s -w"}
}

func (b *Builder) list(ctx context.Context, env, importPaths []string) (map[string]*listedPackage, error) {
	args := append([]string{"list", "-e", "-deps", "-json=ImportPath,Dir,Name,Standard,GoFiles,CgoFiles,EmbedFiles,Deps,Error"}, importPaths...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = b.Dir
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go list %s: %w: %s", strings.Join(importPaths, " "), err, strings.TrimSpace(stderr.String()))
	}
	pkgs := map[string]*listedPackage{}
	dec := json.NewDecoder(&stdout)
	for {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("reading go list output: %w", err)
		}
		pkgs[p.ImportPath] = &p
	}
	return pkgs, nil
}

// contentKey hashes the Go version, the build flags, the package and the files of every
// dependency outside the standard library.
func contentKey(goVersion []byte, buildFlags []string, p *listedPackage, pkgs map[string]*listedPackage) (string, error) {
	h := sha256.New()
	h.Write(goVersion)
	fmt.Fprintf(h, "%q\n", buildFlags)
	h.Write([]byte(p.ImportPath))
	deps := append([]string{p.ImportPath}, p.Deps...)
	sort.Strings(deps)
	for _, d := range deps {
		dp := pkgs[d]
		if dp == nil || dp.Standard {
			continue
		}
		files := append(append(append([]string{}, dp.GoFiles...), dp.CgoFiles...), dp.EmbedFiles...)
		sort.Strings(files)
		for _, f := range files {
			data, err := os.ReadFile(filepath.Join(dp.Dir, f))
			if err != nil {
				return "", err
			}
			fmt.Fprintf(h, "%s/%s %d\n", dp.ImportPath, f, len(data))
			h.Write(data)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}
