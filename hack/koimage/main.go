// Command koimage supports hack/verify-ko.sh: it writes a minimal base image into ko's
// KOCACHE so `ko resolve` runs offline, and measures the images ko built.
//
//	koimage base  -kocache DIR          write the base image into DIR/img, print name@digest
//	koimage sizes -layout DIR -max N -names FILE   print each named image's size; exit 1 if one exceeds
//	                                               its bound (N, or the line's own) or is not shaped as ko builds it
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// baseName is the repository part of the base image reference. ko finds a digest reference in
// KOCACHE before it would ask any registry, so this name is never resolved over the network.
const baseName = "knfaas-base"

// nonroot is the user functions run as; numeric so Kubernetes' runAsNonRoot can verify it.
const nonroot = 65532

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: koimage base -kocache DIR | koimage sizes -layout DIR -max BYTES")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "base":
		err = runBase(os.Args[2:])
	case "sizes":
		err = runSizes(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "koimage:", err)
		os.Exit(1)
	}
}

func runBase(args []string) error {
	fs := flag.NewFlagSet("base", flag.ContinueOnError)
	kocache := fs.String("kocache", "", "ko's KOCACHE directory")
	caFile := fs.String("ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "CA bundle copied into the image (skipped when missing)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kocache == "" {
		return errors.New("-kocache is required")
	}
	img, err := baseImage(*caFile)
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("digesting base image: %w", err)
	}
	// ko's on-disk cache is an OCI layout in KOCACHE/img.
	dir := filepath.Join(*kocache, "img")
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("creating %s: %w", dir, err)
		}
	}
	if err := p.ReplaceImage(img, match.Digests(digest)); err != nil {
		return fmt.Errorf("writing base image to %s: %w", dir, err)
	}
	fmt.Printf("%s@%s\n", baseName, digest)
	return nil
}

// baseImage is linux/amd64 with /etc/passwd and /etc/group naming the nonroot user and the CA
// bundle, and nothing else: ko adds the static Go binary on top. Every timestamp is the zero
// time, so the same inputs give the same digest.
func baseImage(caFile string) (v1.Image, error) {
	files := map[string][]byte{
		"etc/passwd": fmt.Appendf(nil, "root:x:0:0:root:/:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", nonroot, nonroot),
		"etc/group":  fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", nonroot),
	}
	if ca, err := os.ReadFile(caFile); err == nil {
		files["etc/ssl/certs/ca-certificates.crt"] = ca
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("reading CA bundle: %w", err)
	}
	layerTar, err := tarOf(files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("building base layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("appending base layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading base config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS = "linux"
	cfg.Architecture = "amd64"
	cfg.Config.User = fmt.Sprintf("%d:%d", nonroot, nonroot)
	cfg.Config.WorkingDir = "/"
	cfg.Config.Env = []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
	}
	return mutate.ConfigFile(img, cfg)
}

// tarOf writes files (and their parent directories) into a tar with fixed owners and times.
func tarOf(files map[string][]byte) ([]byte, error) {
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[string]bool{}
	for _, name := range names {
		for _, dir := range parents(name) {
			if seen[dir] {
				continue
			}
			seen[dir] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
				return nil, fmt.Errorf("writing tar: %w", err)
			}
		}
		data := files[name]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: time.Unix(0, 0)}); err != nil {
			return nil, fmt.Errorf("writing tar: %w", err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("writing tar: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("writing tar: %w", err)
	}
	return buf.Bytes(), nil
}

// parents lists the directories above name, outermost first: "etc/ssl/certs/x" → etc, etc/ssl, etc/ssl/certs.
func parents(name string) []string {
	var dirs []string
	for dir := filepath.Dir(name); dir != "."; dir = filepath.Dir(dir) {
		dirs = append([]string{dir}, dirs...)
	}
	return dirs
}

func runSizes(args []string) error {
	fs := flag.NewFlagSet("sizes", flag.ContinueOnError)
	dir := fs.String("layout", "", "OCI layout written by ko --oci-layout-path")
	maxBytes := fs.Int64("max", 25<<20, "largest allowed image: uncompressed layers, the size it takes on a node")
	namesFile := fs.String("names", "", "file of \"<digest> <name> [<max bytes>]\" lines: the images to measure, each with its own bound or -max")
	if err := fs.Parse(args); err != nil {
		return err
	}
	data, err := os.ReadFile(*namesFile)
	if err != nil {
		return fmt.Errorf("reading names: %w", err)
	}
	p, err := layout.FromPath(*dir)
	if err != nil {
		return fmt.Errorf("opening layout %s: %w", *dir, err)
	}
	var tooBig []string
	seen := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 || seen[fields[0]] {
			continue
		}
		digest, name, limit := fields[0], fields[1], *maxBytes
		if len(fields) > 2 {
			if limit, err = strconv.ParseInt(fields[2], 10, 64); err != nil {
				return fmt.Errorf("%s: bound %q: %w", name, fields[2], err)
			}
		}
		seen[digest] = true
		// Read the manifest from the layout's blobs rather than its index.json: ko builds images
		// in parallel and an index entry can go missing, the blobs cannot.
		img, err := imageFromBlobs(p, digest)
		if err != nil {
			return fmt.Errorf("%s (%s): %w", name, digest, err)
		}
		compressed, uncompressed, err := imageSizes(img)
		if err != nil {
			return fmt.Errorf("measuring %s: %w", name, err)
		}
		fmt.Printf("%s\t%.1f MB uncompressed\t%.1f MB compressed\t(bound %.1f MB)\n", name, float64(uncompressed)/(1<<20), float64(compressed)/(1<<20), float64(limit)/(1<<20))
		if uncompressed > limit {
			tooBig = append(tooBig, fmt.Sprintf("%s is %d bytes uncompressed, more than %d", name, uncompressed, limit))
		}
		if err := checkShape(p, img, name); err != nil {
			tooBig = append(tooBig, err.Error())
		}
	}
	if len(seen) == 0 {
		return errors.New("no images to measure")
	}
	if len(tooBig) > 0 {
		return fmt.Errorf("images too large or misshapen: %v", tooBig)
	}
	return nil
}

// checkShape checks what every image must be, a function's or the platform's own: run as the
// non-root user of the base image, with the binary ko built from the reference's package as its
// whole entrypoint (no shell around it).
func checkShape(p layout.Path, img *blobImage, name string) error {
	raw, err := p.Bytes(img.manifest.Config.Digest)
	if err != nil {
		return fmt.Errorf("%s: config not in the layout: %w", name, err)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("%s: config: %w", name, err)
	}
	want := "/ko-app/" + name[strings.LastIndex(name, "/")+1:]
	switch {
	case cfg.Config.User != fmt.Sprintf("%d:%d", nonroot, nonroot):
		return fmt.Errorf("%s runs as user %q, want %d:%d", name, cfg.Config.User, nonroot, nonroot)
	case len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != want:
		return fmt.Errorf("%s has entrypoint %q, want [%s]", name, cfg.Config.Entrypoint, want)
	}
	return nil
}

// imageFromBlobs builds the image whose manifest has the given digest out of the layout's blobs.
func imageFromBlobs(p layout.Path, digest string) (*blobImage, error) {
	h, err := v1.NewHash(digest)
	if err != nil {
		return nil, err
	}
	raw, err := p.Bytes(h)
	if err != nil {
		return nil, fmt.Errorf("manifest not in the layout: %w", err)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parsing manifest: %w", err)
	}
	return &blobImage{path: p, manifest: m}, nil
}

// imageSizes sums the image's layers as pulled (compressed) and as unpacked on a node.
func imageSizes(img *blobImage) (compressed, uncompressed int64, err error) {
	for _, l := range img.manifest.Layers {
		compressed += l.Size
		rc, err := img.uncompressedLayer(l.Digest)
		if err != nil {
			return 0, 0, err
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return 0, 0, err
		}
		uncompressed += n
	}
	return compressed, uncompressed, nil
}

// blobImage is an image manifest with its layer blobs in a layout.
type blobImage struct {
	path     layout.Path
	manifest *v1.Manifest
}

func (i *blobImage) uncompressedLayer(h v1.Hash) (io.ReadCloser, error) {
	rc, err := i.path.Blob(h)
	if err != nil {
		return nil, fmt.Errorf("layer %s not in the layout: %w", h, err)
	}
	zr, err := gzip.NewReader(rc)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("layer %s: %w", h, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{zr, rc}, nil
}
