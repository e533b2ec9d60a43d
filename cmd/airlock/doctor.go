package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/runner/hostcheck"
	"github.com/airlock-ci/airlock/secrets"
)

func init() { addCommand(newDoctorCmd) }

// commitTime is the RFC 3339 commit time of the build, set by the linker
// (-X main.commitTime=$(git log -1 --format=%cI)); doctor uses it as the
// earliest sane clock.
var commitTime = ""

func newDoctorCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check that this host can run Airlock, and say how to fix what is wrong",
		Long: `doctor checks the host: root, kernel features (network namespaces, veth,
IPv6 sysctls, ping_group_range), iptables and whether its backend matches
Docker's, the Docker engine, the state directory and key file modes, the
runtime directory, the clock and the configuration file. It prints one line
per check (OK, INFO, WARN or FAIL, with the fix) and exits 1 if any check
failed. Run it as root: some checks exercise the kernel in a throwaway
network namespace.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rs := hostcheck.Run(cmd.Context(), hostcheck.NewEnv(), hostcheck.Options{
				ConfigPath:     g.ConfigPath,
				ConfigRequired: cmd.Flags().Changed("config") || os.Getenv("AIRLOCK_CONFIG") != "",
				StateDir:       g.StateDir,
				KeyFiles:       []string{secrets.KeyFile, audit.KeyFile},
				TestImage:      hostcheck.TestImage,
				BuildTime:      buildTime(),
			})
			if err := printResults(cmd.OutOrStdout(), rs); err != nil {
				return err
			}
			if hostcheck.Failed(rs) {
				return &exitError{code: 1}
			}
			return nil
		},
	}
}

// printResults prints one line per result and a summary.
func printResults(w io.Writer, rs []hostcheck.Result) error {
	counts := map[hostcheck.Status]int{}
	for _, r := range rs {
		counts[r.Status]++
		line := fmt.Sprintf("%-4s  %-18s  %s", r.Status, r.Name, r.Detail)
		if r.Fix != "" && r.Status != hostcheck.OK {
			line += " — fix: " + r.Fix
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "%d checks: %d failed, %d warnings\n", len(rs), counts[hostcheck.Fail], counts[hostcheck.Warn])
	return err
}

// buildTime is a lower bound for a sane clock: the commit time set by the
// linker or stamped by go build (VCS info), else the binary's modification
// time, else zero (unknown).
func buildTime() time.Time {
	if t, err := time.Parse(time.RFC3339, commitTime); err == nil {
		return t
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.time" {
				if t, err := time.Parse(time.RFC3339, s.Value); err == nil {
					return t
				}
			}
		}
	}
	if exe, err := os.Executable(); err == nil {
		if fi, err := os.Stat(exe); err == nil {
			return fi.ModTime()
		}
	}
	return time.Time{}
}
