package mask

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cpuTime returns the process's user+system CPU time. The benchmarks report
// throughput per CPU second as well as per wall second: on a shared machine
// the wall clock mostly measures the other tenants.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// logText returns n bytes of build-log-like text: timestamps, compiler and
// package manager lines, paths, hashes, URLs and numbers.
func logText(n int, rng *rand.Rand) []byte {
	words := []string{"Step", "RUN", "go", "build", "npm", "install", "added", "packages", "in", "warning:",
		"error", "downloading", "github.com/airlock-ci/airlock", "v1.2.3", "ok", "PASS", "FAIL", "--- ",
		"/usr/local/lib/node_modules", "Compiling", "serde", "tokio", "Finished", "release", "target(s)",
		"Fetching", "https://registry.example.test/pkg/-/pkg-4.17.21.tgz", "sha256:", "layer", "Pulling",
		"the", "a", "with", "for", "test", "main.go:42:", "undefined:", "Makefile", "make[1]:", "Entering"}
	var b bytes.Buffer
	for b.Len() < n {
		fmt.Fprintf(&b, "2026-11-29T15:%02d:%02d.%03dZ ", rng.IntN(60), rng.IntN(60), rng.IntN(1000))
		for range 4 + rng.IntN(10) {
			switch r := rng.IntN(20); {
			case r == 0:
				fmt.Fprintf(&b, "%x ", rng.Uint64())
			case r == 1:
				fmt.Fprintf(&b, "%d ", rng.IntN(100000))
			default:
				b.WriteString(words[rng.IntN(len(words))])
				b.WriteByte(' ')
			}
		}
		b.WriteByte('\n')
	}
	return b.Bytes()[:n]
}

// randomSecrets returns n token-like secrets of 20 to 40 characters.
func randomSecrets(n int, rng *rand.Rand) []string {
	const alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.+/"
	out := make([]string, n)
	for i := range out {
		b := make([]byte, 20+rng.IntN(21))
		for j := range b {
			b[j] = alpha[rng.IntN(len(alpha))]
		}
		out[i] = string(b)
	}
	return out
}

// onlyReader hides bytes.Reader's WriterTo so that io.Copy really copies.
type onlyReader struct{ io.Reader }

func BenchmarkMask(b *testing.B) {
	const chunk = 64 << 10
	rng := rand.New(rand.NewPCG(3, 4))
	data := logText(16*chunk, rng)
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("secrets=%d", n), func(b *testing.B) {
			secrets := randomSecrets(n, rng)
			m := New(io.Discard, secrets...)
			// Baseline: a plain io.Copy of the same chunks to io.Discard.
			// CPU time is accounted in ticks: copy for at least 200ms.
			start := cpuTime()
			rounds := 0
			for ; rounds < 1000 || cpuTime()-start < 200*time.Millisecond; rounds++ {
				off := (rounds % 16) * chunk
				if _, err := io.Copy(io.Discard, onlyReader{bytes.NewReader(data[off : off+chunk])}); err != nil {
					b.Fatal(err)
				}
			}
			copyPerChunk := float64((cpuTime() - start).Nanoseconds()) / float64(rounds)

			b.SetBytes(chunk)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := 0; b.Loop(); i++ {
				off := (i % 16) * chunk
				if _, err := m.Write(data[off : off+chunk]); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			maskPerChunk := float64((cpuTime() - cpu0).Nanoseconds()) / float64(b.N)
			b.ReportMetric(chunk/maskPerChunk*1e3, "cpu-MB/s")
			b.ReportMetric(maskPerChunk/copyPerChunk, "x_io.Copy")
			if strings.Contains(string(data), secrets[0]) {
				b.Fatal("log text contains a secret")
			}
		})
	}
}
