package github

import (
	"os"
	"testing"
)

// FuzzDecodeAndConvert checks that no job message makes decoding or
// conversion panic, and that a converted job is valid.
func FuzzDecodeAndConvert(f *testing.F) {
	b, err := os.ReadFile("testdata/job-message.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeJobMessage(b)
		if err != nil {
			return
		}
		j, err := m.ToJob(ConvertOptions{DefaultImage: "img"})
		if err != nil {
			return
		}
		if err := j.Validate(); err != nil {
			t.Fatalf("ToJob returned an invalid job: %v", err)
		}
		_ = m.MaskValues()
		_ = NewDriver(m, j, DriverOptions{}).Len()
	})
}
