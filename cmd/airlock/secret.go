package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlock-ci/airlock/internal/wiring"
	"github.com/airlock-ci/airlock/runner/config"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/fleet"
	"github.com/airlock-ci/airlock/secrets/githubapp"
	"github.com/airlock-ci/airlock/secrets/vault"
)

func init() { addCommand(newSecretCmd) }

// secretsDefaultStateDir is used when neither --state-dir nor AIRLOCK_STATE_DIR is set.
const secretsDefaultStateDir = "/var/lib/airlock"

// openSecretStore opens the state store of g's state directory, on the
// fleet's etcd when the configuration says [store] backend = "etcd".
// With mustExist it refuses to create one (commands that only read or
// remove). close closes both.
func openSecretStore(g *globals, mustExist bool) (st *secrets.Store, close func() error, err error) {
	dir := g.StateDir
	if dir == "" {
		dir = secretsDefaultStateDir
	}
	cfg, err := config.Load(g.ConfigPath, g.ConfigPath == config.DefaultPath)
	if err != nil {
		return nil, nil, err
	}
	st, err = secrets.Open(dir, secrets.OpenOptions{MustExist: mustExist})
	if err != nil {
		return nil, nil, err
	}
	if !cfg.Store.Fleet() {
		return st, st.Close, nil
	}
	ctx := context.Background()
	fs, err := fleet.Open(ctx, wiring.FleetConfig(cfg.Store), "admin", g.Logger())
	if err != nil {
		return nil, nil, errors.Join(err, st.Close())
	}
	if err := st.UseRemote(ctx, fs, nil); err != nil {
		return nil, nil, errors.Join(err, fs.Close(), st.Close())
	}
	return st, func() error { return errors.Join(fs.Close(), st.Close()) }, nil
}

// withSecretStore runs f with the open store and closes it, joining errors.
func withSecretStore(g *globals, f func(*secrets.Store) error) error {
	return withSecretStoreOpts(g, false, f)
}

// readSecretStore is withSecretStore for commands that must not create
// the store.
func readSecretStore(g *globals, f func(*secrets.Store) error) error {
	return withSecretStoreOpts(g, true, f)
}

func withSecretStoreOpts(g *globals, mustExist bool, f func(*secrets.Store) error) error {
	st, closeStore, err := openSecretStore(g, mustExist)
	if err != nil {
		return err
	}
	return errors.Join(f(st), closeStore())
}

// secretValidators are the backends' own checks of a secret's config.
func secretValidators() map[string]secrets.SecretValidator {
	return map[string]secrets.SecretValidator{
		secrets.BackendVault:     vault.New(0),
		secrets.BackendGitHubApp: githubapp.New(nil),
	}
}

func newSecretCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secret",
		Short: "Manage the encrypted secrets in the state store",
	}
	cmd.AddCommand(newSecretSetCmd(g), newSecretLsCmd(g), newSecretRmCmd(g))
	return cmd
}

type secretSetFlags struct {
	fromFile, fromEnv, backend                              string
	params                                                  []string
	vaultAddr, vaultMode, vaultPath, vaultMount, vaultField string
	vaultRoleID, vaultAppRoleMount, vaultNamespace          string
	ghAppID, ghInstallation, ghAPIURL, ghOwner              string
	certFile, keyFile, chainFile                            string
}

// readClientCert reads --cert, --chain and --key into one PEM bundle (leaf,
// chain, key) and checks it; errors never show key material.
func (f *secretSetFlags) readClientCert() ([]byte, error) {
	if f.keyFile == "" {
		return nil, errors.New("--cert needs --key (the certificate's private key, PEM)")
	}
	if f.fromFile != "" || f.fromEnv != "" {
		return nil, errors.New("--cert/--key replace --from-file and --from-env")
	}
	var bundle []byte
	for _, name := range []string{f.certFile, f.chainFile, f.keyFile} {
		if name == "" {
			continue
		}
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", name, err)
		}
		bundle = append(append(bundle, b...), '\n')
		clear(b)
	}
	if _, err := secrets.ParseClientCert(bundle, time.Now()); err != nil {
		clear(bundle)
		return nil, err
	}
	return bundle, nil
}

func newSecretSetCmd(g *globals) *cobra.Command {
	var f secretSetFlags
	cmd := &cobra.Command{
		Use:   "set NAME [--from-file F | --from-env VAR | < value]",
		Short: "Create or replace a secret; the value is read from a file, an environment variable or stdin",
		Long: `Create or replace a secret. The value is never taken from an argument (it would
end up in shell history and in the process list): it comes from --from-file,
--from-env or standard input (one trailing newline is dropped).

The value is what the backend needs in secret:
  builtin    the secret itself (at least 8 characters, so that it can be masked)
  vault      the runner's Vault token, or the AppRole secret_id with --vault-role-id
  githubapp  the GitHub App's private key (PEM)`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 1 {
				return errors.New("secret set takes only the NAME: a value is never taken from an argument (shell history, ps); use --from-file, --from-env or stdin")
			}
			if len(args) == 0 {
				return errors.New("secret set needs the secret's NAME")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var value []byte
			var err error
			if f.certFile != "" || f.keyFile != "" {
				if f.certFile == "" {
					return errors.New("--key needs --cert")
				}
				value, err = f.readClientCert()
			} else {
				value, err = readSecretValue(cmd.InOrStdin(), f.fromFile, f.fromEnv)
			}
			if err != nil {
				return err
			}
			defer clear(value)
			sec := secrets.Secret{Name: args[0], Backend: f.backend, Value: value, Created: time.Now().UTC()}
			if sec.Params, err = f.paramsFor(); err != nil {
				return err
			}
			if f.certFile != "" {
				if sec.Params == nil {
					sec.Params = map[string]string{}
				}
				sec.Params["kind"] = secrets.KindClientCert
			}
			if err := sec.Validate(); err != nil {
				return fmt.Errorf("secret %s: %w", sec.Name, err)
			}
			if v, ok := secretValidators()[sec.Backend]; ok {
				if err := v.ValidateSecret(sec); err != nil {
					return fmt.Errorf("secret %s: %w", sec.Name, err)
				}
			}
			return withSecretStore(g, func(st *secrets.Store) error {
				if err := st.PutSecret(sec); err != nil {
					return err
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "secret %s stored (%s backend)\n", sec.Name, sec.Backend)
				return err
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.fromFile, "from-file", "", "read the value from this file")
	fl.StringVar(&f.fromEnv, "from-env", "", "read the value from this environment variable")
	fl.StringVar(&f.certFile, "cert", "", "client certificate (PEM) for mtls delivery, with --key; checked: key matches, not expired, chain")
	fl.StringVar(&f.keyFile, "key", "", "the client certificate's private key (PEM)")
	fl.StringVar(&f.chainFile, "chain", "", "intermediate certificates (PEM) presented with the client certificate")
	fl.StringVar(&f.backend, "backend", secrets.BackendBuiltin, "backend: builtin, vault or githubapp")
	fl.StringArrayVar(&f.params, "param", nil, "backend parameter key=value (repeatable)")
	fl.StringVar(&f.vaultAddr, "vault-addr", "", "vault: server address")
	fl.StringVar(&f.vaultMode, "vault-mode", "", "vault: token (child token per job), dynamic (lease) or kv (KV v2 value)")
	fl.StringVar(&f.vaultPath, "vault-path", "", "vault: dynamic secret path, or KV path under the mount")
	fl.StringVar(&f.vaultMount, "vault-mount", "", "vault: KV v2 mount (default secret)")
	fl.StringVar(&f.vaultField, "vault-field", "", "vault: field of the dynamic/KV secret to deliver")
	fl.StringVar(&f.vaultRoleID, "vault-role-id", "", "vault: AppRole role_id (the value is then the secret_id)")
	fl.StringVar(&f.vaultAppRoleMount, "vault-approle-mount", "", "vault: AppRole mount (default approle)")
	fl.StringVar(&f.vaultNamespace, "vault-namespace", "", "vault: namespace")
	fl.StringVar(&f.ghAppID, "github-app-id", "", "githubapp: app id")
	fl.StringVar(&f.ghInstallation, "github-installation-id", "", "githubapp: installation id")
	fl.StringVar(&f.ghAPIURL, "github-api-url", "", "githubapp: REST API URL (default https://api.github.com)")
	fl.StringVar(&f.ghOwner, "github-owner", "", "githubapp: the installation's account; jobs of other owners are refused")
	cmd.MarkFlagsMutuallyExclusive("from-file", "from-env")
	return cmd
}

func (f *secretSetFlags) paramsFor() (map[string]string, error) {
	p, err := parseKeyValues(f.params, "param")
	if err != nil {
		return nil, err
	}
	set := func(key, val string) {
		if val != "" {
			p[key] = val
		}
	}
	vaultFlags := map[string]string{vault.ParamAddress: f.vaultAddr, vault.ParamMode: f.vaultMode, vault.ParamPath: f.vaultPath,
		vault.ParamMount: f.vaultMount, vault.ParamField: f.vaultField, vault.ParamRoleID: f.vaultRoleID,
		vault.ParamAppRoleMount: f.vaultAppRoleMount, vault.ParamNamespace: f.vaultNamespace}
	ghFlags := map[string]string{githubapp.ParamAppID: f.ghAppID, githubapp.ParamInstallationID: f.ghInstallation,
		githubapp.ParamAPIURL: f.ghAPIURL, githubapp.ParamOwner: f.ghOwner}
	var wrong []string
	for k, v := range vaultFlags {
		if f.backend == secrets.BackendVault {
			set(k, v)
		} else if v != "" {
			wrong = append(wrong, "--vault-*")
		}
	}
	for k, v := range ghFlags {
		if f.backend == secrets.BackendGitHubApp {
			set(k, v)
		} else if v != "" {
			wrong = append(wrong, "--github-*")
		}
	}
	if len(wrong) > 0 {
		return nil, fmt.Errorf("%s flags do not apply to the %s backend", wrong[0], f.backend)
	}
	if f.backend == secrets.BackendBuiltin && len(p) > 0 {
		return nil, errors.New("the builtin backend takes no --param")
	}
	if len(p) == 0 {
		return nil, nil
	}
	return p, nil
}

// readSecretValue reads the value from a file, an environment variable or
// stdin, dropping one trailing newline.
func readSecretValue(stdin io.Reader, file, env string) ([]byte, error) {
	var v []byte
	var err error
	switch {
	case file != "":
		v, err = os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("reading the value: %w", err)
		}
	case env != "":
		s, ok := os.LookupEnv(env)
		if !ok {
			return nil, fmt.Errorf("reading the value: environment variable %s is not set", env)
		}
		v = []byte(s)
	default:
		if fi, ok := stdin.(*os.File); ok {
			if st, err := fi.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				return nil, errors.New("reading the value: stdin is a terminal; pipe the value in, or use --from-file or --from-env")
			}
		}
		v, err = io.ReadAll(io.LimitReader(stdin, 1<<20))
		if err != nil {
			return nil, fmt.Errorf("reading the value from stdin: %w", err)
		}
	}
	v = bytes.TrimSuffix(v, []byte("\n"))
	v = bytes.TrimSuffix(v, []byte("\r"))
	return v, nil
}

// parseKeyValues parses repeated key=value flags.
func parseKeyValues(items []string, flag string) (map[string]string, error) {
	out := map[string]string{}
	for _, it := range items {
		k, v, ok := strings.Cut(it, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--%s %q: want key=value", flag, it)
		}
		out[k] = v
	}
	return out, nil
}

func newSecretLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List secrets (name, backend, created, non-secret parameters; never values)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return readSecretStore(g, func(st *secrets.Store) error {
				infos, err := st.Secrets()
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tBACKEND\tCREATED\tPARAMS")
				for _, i := range infos {
					var ps []string
					for k, v := range i.Params {
						ps = append(ps, k+"="+v)
					}
					slices.Sort(ps)
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", i.Name, i.Backend, i.Created.UTC().Format(time.RFC3339), strings.Join(ps, " "))
				}
				return tw.Flush()
			})
		},
	}
}

func newSecretRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a secret (refused while credentials minted from it await revocation)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return readSecretStore(g, func(st *secrets.Store) error {
				if err := st.DeleteSecret(args[0]); err != nil {
					return err
				}
				gs, err := st.Grants()
				if err != nil {
					return err
				}
				n := 0
				for _, gr := range gs {
					if gr.Secret == args[0] {
						n++
					}
				}
				if n > 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "note: %d grant(s) still name %s; they match nothing until it is set again (airlock grant ls)\n", n, args[0])
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "secret %s removed\n", args[0])
				return err
			})
		},
	}
}
