package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlock-ci/airlock/executors/docker"
	"github.com/airlock-ci/airlock/internal/atomicfile"
	"github.com/airlock-ci/airlock/runner/config"
)

func init() { addCommand(newServiceCmd) }

//go:embed airlock.service.tmpl
var unitTemplate string

// unitName is the systemd unit the service commands manage.
const unitName = "airlock.service"

// teardownMargin is added to shutdown_timeout (and the container stop
// grace) for TimeoutStopSec=: time to revoke credentials, tear sandboxes
// down and seal audit trails after the last job stopped.
const teardownMargin = 90 * time.Second

// unitData fills airlock.service.tmpl.
type unitData struct {
	ExecPath, ConfigPath, ConfigDir string
	// ExtraArgs follow "run --config PATH" (with a leading space).
	ExtraArgs                  string
	StateDir, RuntimeDir       string
	ShutdownTimeout, StopGrace time.Duration
	TeardownMargin             time.Duration
	TimeoutStopSec             int64

	// Set when the directory is one systemd manages for us
	// (/var/lib/X, /etc/X, /run/X); else the path is in ReadWritePaths.
	StateDirectory, ConfigurationDirectory, RuntimeDirectory string
	ReadWritePaths                                           string
}

// newUnitData derives the unit's settings from the loaded configuration.
// execPath and configPath must be absolute.
func newUnitData(cfg *config.Config, execPath, configPath string) (unitData, error) {
	for _, p := range []string{execPath, configPath} {
		if err := plainPath(p); err != nil {
			return unitData{}, err
		}
	}
	grace := cfg.Grace()
	if grace <= 0 {
		grace = docker.DefaultGrace
	}
	d := unitData{
		ExecPath:        execPath,
		ConfigPath:      configPath,
		ConfigDir:       filepath.Dir(configPath),
		StateDir:        filepath.Clean(cfg.StateDir),
		RuntimeDir:      filepath.Clean(cfg.RuntimeDir),
		ShutdownTimeout: cfg.ShutdownTimeout,
		StopGrace:       grace,
		TeardownMargin:  teardownMargin,
	}
	total := cfg.ShutdownTimeout + grace + teardownMargin
	d.TimeoutStopSec = int64((total + time.Second - 1) / time.Second)

	var rw []string
	if rel, ok := managedDir("/var/lib", d.StateDir); ok {
		d.StateDirectory = rel
	} else {
		rw = append(rw, d.StateDir)
	}
	if rel, ok := managedDir("/run", d.RuntimeDir); ok {
		d.RuntimeDirectory = rel
	} else {
		rw = append(rw, d.RuntimeDir)
	}
	if rel, ok := managedDir("/etc", d.ConfigDir); ok {
		d.ConfigurationDirectory = rel
	}
	// The agent writes config.toml back when it rotates a runner token;
	// ProtectSystem=full would make /etc read-only.
	rw = append(rw, d.ConfigDir)
	for _, p := range rw {
		if err := plainPath(p); err != nil {
			return unitData{}, err
		}
	}
	d.ReadWritePaths = strings.Join(rw, " ")
	return d, nil
}

// managedDir reports whether dir lies below base, and its path relative
// to base (what StateDirectory= and friends take).
func managedDir(base, dir string) (string, bool) {
	rel, err := filepath.Rel(base, dir)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return "", false
	}
	return rel, true
}

// renderUnit writes the unit file for d.
func renderUnit(w io.Writer, d unitData) error {
	t, err := template.New("unit").Parse(unitTemplate)
	if err != nil {
		return fmt.Errorf("parsing the unit template: %w", err)
	}
	if err := t.Execute(w, d); err != nil {
		return fmt.Errorf("rendering the unit: %w", err)
	}
	return nil
}

// serviceHost is what the service commands touch on the host.
type serviceHost struct {
	// systemdDir exists when systemd runs (/run/systemd/system).
	systemdDir string
	// systemctl runs systemctl with args.
	systemctl func(ctx context.Context, args ...string) error
	out       io.Writer
}

func realServiceHost(out io.Writer) serviceHost {
	return serviceHost{
		systemdDir: "/run/systemd/system",
		systemctl: func(ctx context.Context, args ...string) error {
			out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("running systemctl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
			}
			return nil
		},
		out: out,
	}
}

func (h serviceHost) systemdRunning() bool {
	st, err := os.Stat(h.systemdDir)
	return err == nil && st.IsDir()
}

type serviceOptions struct {
	unitDir  string
	execPath string
	enable   bool
	start    bool
}

func newServiceCmd(g *globals) *cobra.Command {
	var o serviceOptions
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Install, remove or print the systemd unit that runs `airlock run`",
		Long: `The service commands manage /etc/systemd/system/airlock.service, which runs
the agent (airlock run) with the configuration file given by --config. The
unit is rendered from the configuration (TimeoutStopSec follows
shutdown_timeout) and hardened; the template documents every privilege.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&o.unitDir, "unit-dir", "/etc/systemd/system", "directory the unit file is written to")
	pf.StringVar(&o.execPath, "binary", "", "airlock binary the unit runs (default: this executable)")

	unit := &cobra.Command{
		Use:   "unit",
		Short: "Print the unit file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := unitDataFor(cmd, g, o)
			if err != nil {
				return err
			}
			return renderUnit(cmd.OutOrStdout(), d)
		},
	}
	install := &cobra.Command{
		Use:   "install",
		Short: "Write the unit, reload systemd, and optionally enable and start it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := unitDataFor(cmd, g, o)
			if err != nil {
				return err
			}
			return installService(cmd.Context(), realServiceHost(cmd.OutOrStdout()), o, d)
		},
	}
	install.Flags().BoolVar(&o.enable, "enable", false, "enable the unit (start at boot)")
	install.Flags().BoolVar(&o.start, "start", false, "start (or restart) the unit now")
	uninstall := &cobra.Command{
		Use:   "uninstall",
		Short: "Stop and disable the unit and remove its file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return uninstallService(cmd.Context(), realServiceHost(cmd.OutOrStdout()), o)
		},
	}
	cmd.AddCommand(unit, install, uninstall)
	return cmd
}

// unitDataFor loads the configuration and resolves the binary's path.
func unitDataFor(cmd *cobra.Command, g *globals, o serviceOptions) (unitData, error) {
	cfg, err := loadConfig(cmd, g)
	if err != nil {
		return unitData{}, err
	}
	cfgPath, err := filepath.Abs(g.ConfigPath)
	if err != nil {
		return unitData{}, fmt.Errorf("resolving the configuration path: %w", err)
	}
	execPath := o.execPath
	if execPath == "" {
		if execPath, err = os.Executable(); err != nil {
			return unitData{}, fmt.Errorf("finding the airlock binary (pass --binary): %w", err)
		}
	}
	if execPath, err = filepath.Abs(execPath); err != nil {
		return unitData{}, fmt.Errorf("resolving the binary path: %w", err)
	}
	if real, err := filepath.EvalSymlinks(execPath); err == nil {
		execPath = real
	}
	d, err := newUnitData(cfg, execPath, cfgPath)
	if err != nil {
		return unitData{}, err
	}
	if g.StateDir != "" {
		// The unit must run with the state directory the unit was
		// rendered for.
		if err := plainPath(d.StateDir); err != nil {
			return unitData{}, err
		}
		d.ExtraArgs = " --state-dir " + d.StateDir
	}
	return d, nil
}

// plainPath rejects absolute paths a unit file would need to quote.
func plainPath(p string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("rendering the unit: %q is not an absolute path", p)
	}
	if strings.ContainsAny(p, " \t\n\"'\\%$;") {
		return fmt.Errorf("rendering the unit: path %q holds characters a unit file would need quoted; use a plain path", p)
	}
	return nil
}

// installService writes the unit (0644, atomically) and, where systemd
// runs, reloads it and enables/starts the unit as asked.
func installService(ctx context.Context, h serviceHost, o serviceOptions, d unitData) error {
	var buf bytes.Buffer
	if err := renderUnit(&buf, d); err != nil {
		return err
	}
	path := filepath.Join(o.unitDir, unitName)
	if err := writeFileAtomic(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing the unit: %w", err)
	}
	fmt.Fprintf(h.out, "wrote %s (runs %s run --config %s)\n", path, d.ExecPath, d.ConfigPath)
	if !h.systemdRunning() {
		fmt.Fprintf(h.out, "systemd is not running (no %s): not reloading; once it runs: systemctl daemon-reload && systemctl enable --now %s\n", h.systemdDir, unitName)
		return nil
	}
	if err := h.systemctl(ctx, "daemon-reload"); err != nil {
		return err
	}
	if o.enable {
		if err := h.systemctl(ctx, "enable", unitName); err != nil {
			return err
		}
		fmt.Fprintf(h.out, "enabled %s\n", unitName)
	}
	if o.start {
		// restart: a re-install must run the new binary and unit.
		if err := h.systemctl(ctx, "restart", unitName); err != nil {
			return err
		}
		fmt.Fprintf(h.out, "started %s (journalctl -u %s -f)\n", unitName, unitName)
	}
	return nil
}

// uninstallService stops and disables the unit (where systemd runs) and
// removes its file. A unit that is not installed is not an error.
func uninstallService(ctx context.Context, h serviceHost, o serviceOptions) error {
	path := filepath.Join(o.unitDir, unitName)
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(h.out, "%s is not installed\n", path)
		return nil
	}
	var errs []error
	running := h.systemdRunning()
	if running {
		if err := h.systemctl(ctx, "stop", unitName); err != nil {
			errs = append(errs, err)
		}
		if err := h.systemctl(ctx, "disable", unitName); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(path); err != nil {
		errs = append(errs, fmt.Errorf("removing the unit: %w", err))
	} else {
		fmt.Fprintf(h.out, "removed %s\n", path)
	}
	if running {
		if err := h.systemctl(ctx, "daemon-reload"); err != nil {
			errs = append(errs, err)
		}
	} else {
		fmt.Fprintf(h.out, "systemd is not running (no %s): nothing to stop or disable\n", h.systemdDir)
	}
	return errors.Join(errs...)
}

// writeFileAtomic writes b to path through a temporary file and rename.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, mode)
}
