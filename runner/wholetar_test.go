package runner

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// twoFileTar is an archive of dir/ with files a (512 zero bytes, so that
// its contents look like an end marker) and b; cut is the length of the
// stream up to the end of a's entry.
func twoFileTar(t *testing.T) (whole []byte, cut int) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, body []byte) {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "dir/", Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	add("dir/a", make([]byte, 512))
	if err := tw.Flush(); err != nil {
		t.Fatal(err)
	}
	cut = buf.Len()
	add("dir/b", []byte("the last file"))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), cut
}

// TestWholeTarRefusesACutArchive: archive/tar reads an archive cut at
// an entry's end as a whole one; a copy out of a container cut short
// there lost its last files without a word.
func TestWholeTarRefusesACutArchive(t *testing.T) {
	whole, cut := twoFileTar(t)
	cases := map[string][]byte{
		"at an entry's end":        whole[:cut],
		"inside an entry's header": whole[:cut+100],
		"empty":                    nil,
	}
	for name, data := range cases {
		t.Run("untarInto "+name, func(t *testing.T) {
			err := untarInto(bytes.NewReader(data), t.TempDir(), "out")
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("untarInto of a cut archive: error = %v, want unexpected EOF", err)
			}
		})
		t.Run("renameInto "+name, func(t *testing.T) {
			err := renameInto(tar.NewWriter(io.Discard), bytes.NewReader(data), "out")
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("renameInto of a cut archive: error = %v, want unexpected EOF", err)
			}
		})
	}

	dst := t.TempDir()
	if err := untarInto(bytes.NewReader(whole), dst, "out"); err != nil {
		t.Fatalf("untarInto of the whole archive: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "out", "b")); err != nil || string(b) != "the last file" {
		t.Errorf("out/b = %q, %v", b, err)
	}
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	if err := renameInto(tw, bytes.NewReader(whole), "x"); err != nil {
		t.Fatalf("renameInto of the whole archive: %v", err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	tr := newWholeTar(&out)
	var names []string
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading renameInto's archive: %v", err)
		}
		names = append(names, hdr.Name)
	}
	if len(names) != 2 || names[0] != "x/a" || names[1] != "x/b" {
		t.Errorf("renameInto's entries = %q, want x/a x/b", names)
	}
}
