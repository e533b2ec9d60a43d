package procs

import (
	"os/exec"
	"testing"
)

func TestOwnerAlive(t *testing.T) {
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if !self.Alive() {
		t.Errorf("Self().Alive() = false, want true")
	}
	if (Owner{PID: self.PID, Start: self.Start + 1}).Alive() {
		t.Errorf("an owner with another start time (pid reuse) is alive, want not")
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if (Owner{PID: cmd.Process.Pid, Start: 1}).Alive() {
		t.Errorf("exited process is alive")
	}
	got, err := Parse(self.String())
	if err != nil || got != self {
		t.Errorf("Parse(%q) = %v, %v; want %v", self.String(), got, err, self)
	}
	for _, bad := range []string{"", "12", "x:1", "1:y"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) succeeded, want an error", bad)
		}
	}
}
