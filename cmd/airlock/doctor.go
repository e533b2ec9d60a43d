package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlock-ci/airlock/audit"
	"github.com/airlock-ci/airlock/executors/stepd"
	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/runner"
	"github.com/airlock-ci/airlock/runner/config"
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
Docker's, the Docker engine, containerd (socket, namespace, snapshotter and
runtime, when executor = "containerd"), the state directory and key file modes, the
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
				KeyFiles:       []string{secrets.KeyFile, audit.KeyFile, netpolicy.CAKeyFile, runner.JournalKeyFile},
				TestImage:      hostcheck.TestImage,
				BuildTime:      buildTime(),
			})
			if r, ok := fleetCheck(g); ok {
				rs = append(rs, r)
			}
			// The checks below read the settings (a configuration that does
			// not load is reported above; they then take the defaults).
			cfg, err := config.Load(g.ConfigPath, true)
			if err != nil {
				cfg = nil
			}
			rs = append(rs, egressResult(cfg), stepServerResult(cfg))
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

// egressResult says where the gateway's upstream connections leave from
// (for provider-side IP allowlists).
func egressResult(cfg *config.Config) hostcheck.Result {
	r := hostcheck.Result{Name: "gateway egress", Status: hostcheck.Info}
	spec := ""
	if cfg != nil {
		spec = cfg.Gateway.EgressSource
	}
	detail, err := netpolicy.EgressAddrs(spec)
	if err != nil {
		r.Status, r.Detail, r.Fix = hostcheck.Fail, err.Error(), "set [gateway] egress_source to an address or interface of this host"
		return r
	}
	r.Detail = detail
	return r
}

// stepServerResult says whether job steps run through the step server (a
// fork in the container) or as engine execs (~100 ms more each; on
// containerd 1.6 an instant failure may also be reported as 0), for the
// executor the configuration selects.
func stepServerResult(cfg *config.Config) hostcheck.Result {
	executor, section, setting := config.ExecutorDocker, "docker", ""
	if cfg != nil {
		executor = cfg.ExecutorName()
		setting = cfg.Docker.StepServer
		if executor == config.ExecutorContainerd {
			section, setting = "containerd", cfg.Containerd.StepServer
		}
	}
	r := hostcheck.Result{Name: executor + " step server", Status: hostcheck.OK}
	p, why, err := stepd.Resolve(section+".step_server", setting)
	switch {
	case err != nil:
		r.Status, r.Detail, r.Fix = hostcheck.Fail, err.Error(), "point ["+section+"] step_server at a static airlock-stepd (make build makes bin/airlock-stepd), or set it to \"off\""
	case p == "" && setting == "off":
		r.Status, r.Detail = hostcheck.Info, "every step is an engine exec (step_server = \"off\")"
	case p == "":
		r.Status, r.Detail, r.Fix = hostcheck.Warn, "every step is an engine exec: "+why, "install airlock-stepd next to airlock (make install does)"
	default:
		r.Detail = p
	}
	return r
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
