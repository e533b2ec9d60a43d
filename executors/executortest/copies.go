package executortest

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"testing/iotest"
	"time"

	"github.com/airlock-ci/airlock/executors"
)

// Files copied in arrive; a copy in whose stream broke off fails (a tar
// in the container may take a stream that ends at an entry for a whole
// archive); closing a copy out, read to its end marker or not at all,
// leaves the container's processes alone (cancelling the copy's exec
// used to stop them all, as a cancelled step does).
func (s *suite) testCopies(t *testing.T) {
	e := s.env(t)
	c := e.create(t, e.spec("copies"))
	up, okU := c.(executors.Uploader)
	down, okD := c.(executors.Downloader)
	if !okU || !okD {
		return // the executor copies no files
	}
	ctx := context.Background()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	if err := tw.WriteHeader(&tar.Header{Name: "d/f", Mode: 0o644, Size: 7}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte("payload")); err != nil {
		t.Fatal(err)
	}
	if err := tw.Flush(); err != nil {
		t.Fatal(err)
	}
	cut := append([]byte(nil), buf.Bytes()...)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := up.Upload(ctx, "/builds", &buf); err != nil {
		t.Fatalf("Upload: %v", err)
	}
	if out := mustSh(t, c, `cat /builds/d/f`); out != "payload" {
		t.Errorf("the uploaded file holds %q", out)
	}
	broken := io.MultiReader(bytes.NewReader(cut), iotest.ErrReader(errors.New("the job's side failed")))
	if err := up.Upload(ctx, "/tmp", broken); err == nil {
		t.Errorf("Upload of a stream that broke off after an entry succeeded")
	}

	mustSh(t, c, `head -c 1048576 /dev/zero > /builds/d/big && (setsid sleep 1000 > /dev/null 2>&1 &)`)
	for _, read := range []bool{true, false} {
		rc, err := down.Download(ctx, "/builds/d")
		if err != nil {
			t.Fatal(err)
		}
		if read {
			tr := tar.NewReader(rc)
			for {
				if _, err := tr.Next(); err != nil {
					if !errors.Is(err, io.EOF) {
						t.Fatalf("reading the copy: %v", err)
					}
					break
				}
			}
		}
		if err := rc.Close(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // a stop sends SIGTERM at once
		if out := mustSh(t, c, `for p in /proc/[0-9]*; do if [ "$(cat $p/comm 2>/dev/null)" = sleep ]; then echo alive; break; fi; done`); out != "alive\n" {
			t.Errorf("after closing a copy out (read to its end: %v), the background process is gone", read)
		}
	}
}
