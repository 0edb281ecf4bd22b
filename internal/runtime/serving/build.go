package serving

import (
	"bufio"
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
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// KoPrefix marks an image that ko builds from a Go import path.
const KoPrefix = "ko://"

// Builder turns ko:// image references into local binaries with `go build`, caching each
// binary under a key made from the content of every non-standard-library source file it
// depends on, so an unchanged function is not built again.
//
// Binaries that are not cached are built in two steps: one `go build` compiles every package
// they depend on (shared dependencies once, in parallel, as go schedules them), then each
// function's own package is compiled and linked, Parallelism at a time.
type Builder struct {
	// Dir is the module directory `go` runs in.
	Dir string
	// Modules are further Go modules (module path -> directory), such as users' own functions
	// outside this repository: an import path of one of them (the longest matching module path)
	// is built in its directory, with its go.mod.
	Modules map[string]string
	// CacheDir holds built binaries.
	CacheDir string
	// Parallelism bounds the functions linked at once; 0 is the number of CPUs.
	Parallelism int
	// Progress, if set, is told of each step as it starts and ends (from several goroutines,
	// one call at a time).
	Progress func(BuildProgress)
}

// BuildStep names a step of Build.
type BuildStep string

// Steps reported to Builder.Progress.
const (
	// StepDepsStart: the shared dependencies of Functions binaries start compiling.
	StepDepsStart BuildStep = "deps-start"
	// StepDepsCompiling: Packages packages were compiled so far (reported every few seconds).
	StepDepsCompiling BuildStep = "deps-compiling"
	// StepDepsDone: the shared dependencies are compiled (Packages were not cached), or Err.
	StepDepsDone BuildStep = "deps-done"
	// StepStart: ImportPath starts building.
	StepStart BuildStep = "start"
	// StepDone: ImportPath is built, or Err.
	StepDone BuildStep = "done"
)

// BuildProgress is one step of a build.
type BuildProgress struct {
	Step       BuildStep
	ImportPath string
	// Functions is the number of binaries to build (not cached).
	Functions int
	// Packages counts the packages compiled so far (StepDepsCompiling, StepDepsDone).
	Packages int
	// Elapsed is the time since the step started (StepDepsCompiling, StepDepsDone, StepDone).
	Elapsed time.Duration
	Err     error
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

// Build builds every import path, returning binaries in the same order. Import paths of
// Modules are built in their module's directory, one module after the other.
func (b *Builder) Build(ctx context.Context, importPaths []string) ([]Built, error) {
	if len(importPaths) == 0 {
		return nil, nil
	}
	dirs := map[string][]int{} // module directory -> indexes of its import paths
	var order []string
	for i, ip := range importPaths {
		dir := b.ModuleDir(ip)
		if _, ok := dirs[dir]; !ok {
			order = append(order, dir)
		}
		dirs[dir] = append(dirs[dir], i)
	}
	if len(order) == 1 {
		in := *b
		in.Dir = order[0]
		return in.buildIn(ctx, importPaths)
	}
	out := make([]Built, len(importPaths))
	for _, dir := range order {
		in := *b
		in.Dir = dir
		var paths []string
		for _, i := range dirs[dir] {
			paths = append(paths, importPaths[i])
		}
		built, err := in.buildIn(ctx, paths)
		if err != nil {
			return nil, fmt.Errorf("in module %s: %w", dir, err)
		}
		for n, i := range dirs[dir] {
			out[i] = built[n]
		}
	}
	return out, nil
}

// ModuleDir is the directory importPath is built in: that of the longest module path of
// Modules that contains it, else Dir.
func (b *Builder) ModuleDir(importPath string) string {
	dir, best := b.Dir, ""
	for module, d := range b.Modules {
		if (importPath == module || strings.HasPrefix(importPath, module+"/")) && len(module) > len(best) {
			dir, best = d, module
		}
	}
	return dir
}

// buildIn builds import paths of the module in b.Dir.
func (b *Builder) buildIn(ctx context.Context, importPaths []string) ([]Built, error) {
	env, buildFlags := buildSettings(Race())
	pkgs, err := b.list(ctx, env, importPaths)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(b.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating build cache: %w", err)
	}
	settings, err := toolchain(ctx, b.Dir, env)
	if err != nil {
		return nil, err
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
		key, err := contentKey(settings, buildFlags, p, pkgs)
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
	if len(toBuild) == 0 {
		return out, nil
	}
	var mains []string
	for _, i := range toBuild {
		mains = append(mains, out[i].ImportPath)
	}
	progress := b.progressFunc()
	if err := b.compileDeps(ctx, env, buildFlags, mains, pkgs, progress); err != nil {
		return nil, err
	}
	parallel := b.Parallelism
	if parallel <= 0 {
		parallel = runtime.NumCPU()
	}
	sem := make(chan struct{}, parallel)
	errs := make([]error, len(toBuild))
	var wg sync.WaitGroup
	for n, i := range toBuild {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[n] = ctx.Err()
				return
			}
			defer func() { <-sem }()
			progress(BuildProgress{Step: StepStart, ImportPath: out[i].ImportPath, Functions: len(toBuild)})
			started := time.Now()
			errs[n] = b.buildOne(ctx, env, buildFlags, out[i])
			progress(BuildProgress{Step: StepDone, ImportPath: out[i].ImportPath, Functions: len(toBuild), Elapsed: time.Since(started), Err: errs[n]})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// progressFunc is b.Progress made safe to call from several goroutines, or a no-op.
func (b *Builder) progressFunc() func(BuildProgress) {
	if b.Progress == nil {
		return func(BuildProgress) {}
	}
	var mu sync.Mutex
	return func(p BuildProgress) {
		mu.Lock()
		defer mu.Unlock()
		b.Progress(p)
	}
}

// compileDeps compiles every package the mains import, in one `go build` (which compiles
// and discards library packages), so that the per-function builds only compile their own
// package and link. go build -v names each package it compiles; they are counted.
func (b *Builder) compileDeps(ctx context.Context, env, buildFlags, mains []string, pkgs map[string]*listedPackage, progress func(BuildProgress)) error {
	seen := map[string]bool{}
	for _, m := range mains {
		seen[m] = true
	}
	var deps []string
	for _, m := range mains {
		for _, d := range pkgs[m].Deps {
			if !seen[d] && pkgs[d] != nil && pkgs[d].Name != "main" && d != "unsafe" && d != "C" {
				seen[d] = true
				deps = append(deps, d)
			}
		}
	}
	if len(deps) == 0 {
		return nil
	}
	sort.Strings(deps)
	progress(BuildProgress{Step: StepDepsStart, Functions: len(mains)})
	started := time.Now()
	args := append(append([]string{"build", "-v"}, buildFlags...), deps...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = b.Dir
	cmd.Env = env
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return fmt.Errorf("compiling the functions' dependencies: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("compiling the functions' dependencies: %w", err)
	}
	// go build -v prints each package it compiles on a line of its own; anything else is an
	// error message, kept for the error.
	var compiled atomic.Int64
	var messages bytes.Buffer
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			if _, ok := pkgs[line]; ok && !strings.Contains(line, " ") {
				compiled.Add(1)
				continue
			}
			messages.WriteString(line + "\n")
		}
	}()
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	waited := make(chan error, 1)
	go func() { <-read; waited <- cmd.Wait() }()
	for {
		select {
		case <-tick.C:
			progress(BuildProgress{Step: StepDepsCompiling, Functions: len(mains), Packages: int(compiled.Load()), Elapsed: time.Since(started)})
		case err := <-waited:
			if err != nil {
				err = fmt.Errorf("compiling the functions' dependencies: %w: %s", err, strings.TrimSpace(messages.String()))
			}
			progress(BuildProgress{Step: StepDepsDone, Functions: len(mains), Packages: int(compiled.Load()), Elapsed: time.Since(started), Err: err})
			return err
		}
	}
}

// progressInterval is how often a long compile reports how far it got.
var progressInterval = 5 * time.Second

// buildOne compiles and links one binary into the cache, atomically.
func (b *Builder) buildOne(ctx context.Context, env, buildFlags []string, out Built) error {
	tmp := out.Binary + ".tmp"
	args := append(append([]string{"build"}, buildFlags...), "-o", tmp, out.ImportPath)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = b.Dir
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("building %s: %w: %s", out.ImportPath, err, strings.TrimSpace(stderr.String()))
	}
	if err := os.Rename(tmp, out.Binary); err != nil {
		return fmt.Errorf("building %s: %w", out.ImportPath, err)
	}
	return nil
}

// buildSettings returns the environment and flags of go list and go build. A plain build
// keeps the toolchain's defaults (the environment's CGO_ENABLED, no -trimpath): those of
// `go run ./cmd/knfaas`, so every package the CLI and the functions share (the standard
// library, the CloudEvents SDK, go-redis, OpenTelemetry, …) is compiled once and then found
// in the Go build cache. -ldflags strips the binary's symbol table and DWARF; it only affects
// linking, which is per binary anyway. A race build adds -race and cgo, which it needs, as
// `CGO_ENABLED=1 go test -race` does, so it shares that compile cache instead.
func buildSettings(race bool) (env, flags []string) {
	if race {
		return append(os.Environ(), "CGO_ENABLED=1"), []string{"-race"}
	}
	return os.Environ(), []string{"-ldflags=-s -w"}
}

// toolchainSettings are the go env variables that change what a build produces, beside the
// flags: each binary's cache key includes their values.
var toolchainSettings = []string{"GOVERSION", "GOOS", "GOARCH", "CGO_ENABLED", "GOEXPERIMENT", "GOFLAGS"}

// toolchain returns the values of toolchainSettings as go reports them in dir with env (the
// module's toolchain line and the environment both count).
func toolchain(ctx context.Context, dir string, env []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "go", append([]string{"env"}, toolchainSettings...)...)
	cmd.Dir = dir
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("reading go env: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
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

// contentKey hashes the toolchain's settings (Go version, cgo, …), the build flags, the
// package and the files of every dependency outside the standard library.
func contentKey(settings []byte, buildFlags []string, p *listedPackage, pkgs map[string]*listedPackage) (string, error) {
	h := sha256.New()
	h.Write(settings)
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
