package gitlab

import (
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkArchiveZip measures archive throughput (MB/s of file data)
// for a tree of 64 files of 512 KiB (half random, half compressible), as
// Collect archives a job's artifacts on the host.
func BenchmarkArchiveZip(b *testing.B) {
	dir := b.TempDir()
	var total int64
	for i := 0; i < 64; i++ {
		data := make([]byte, 512<<10)
		if i%2 == 0 {
			rand.Read(data)
		}
		p := filepath.Join(dir, "out", fmt.Sprintf("d%d", i%8), fmt.Sprintf("f%d.bin", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
		total += int64(len(data))
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer root.Close()
	s := &Selector{Root: root, ProjectDir: "/builds"}
	for _, level := range []string{"fastest", "fast", "default"} {
		b.Run(level, func(b *testing.B) {
			b.SetBytes(total)
			for i := 0; i < b.N; i++ {
				entries, err := s.Select(Selection{Paths: []string{"out"}})
				if err != nil {
					b.Fatal(err)
				}
				if err := WriteZipLevel(io.Discard, root, entries, CompressionLevel(level)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
