package audit

import (
	"bytes"
	"testing"
)

// FuzzVerify: Verify and ReadRecords never panic, and Verify accepts only
// the untouched trail or a byte-identical re-encoding of it.
func FuzzVerify(f *testing.F) {
	key := testKey(f)
	good := writeTrail(f, key, 4)
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte("{}\n"))
	f.Add([]byte(`{"seq":1,"time":"x","runner":"r","job":"j","type":"seal","prev":"","hash":""}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ReadRecords(bytes.NewReader(data))
		_, err := Verify(bytes.NewReader(data), key.Public())
		if err == nil && !bytes.Equal(data, good) {
			// Only semantically identical trails may verify: same records.
			a, _ := ReadRecords(bytes.NewReader(data))
			b, _ := ReadRecords(bytes.NewReader(good))
			if len(a) != len(b) {
				t.Fatalf("Verify accepted a trail with %d records, want %d", len(a), len(b))
			}
			for i := range a {
				if a[i].Hash != b[i].Hash {
					t.Fatalf("Verify accepted a changed record %d", a[i].Seq)
				}
			}
		}
	})
}
