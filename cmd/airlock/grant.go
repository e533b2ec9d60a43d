package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/airlock-ci/airlock/runner/job"
	"github.com/airlock-ci/airlock/secrets"
	"github.com/airlock-ci/airlock/secrets/githubapp"
	"github.com/airlock-ci/airlock/secrets/vault"
)

func init() { addCommand(newGrantCmd) }

func newGrantCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "grant",
		Short: "Manage which repos, refs and environments may use which secret",
		Long: `Grants decide which jobs receive which secret. Default deny: a job that declares a
secret no grant matches fails before any of its code runs.

Patterns are globs: '*' matches within one path segment, '**' across segments
(group/* matches group/app, group/** also group/sub/app).`,
	}
	cmd.AddCommand(newGrantAddCmd(g), newGrantLsCmd(g), newGrantRmCmd(g), newGrantCheckCmd(g),
		newGrantExportCmd(g), newGrantImportCmd(g))
	return cmd
}

// checkGrantsForBackends runs the backend-specific checks of each grant's
// scope against its secret's backend. Every problem is returned at once.
func checkGrantsForBackends(st *secrets.Store, gs []secrets.Grant) error {
	infos, err := st.Secrets()
	if err != nil {
		return err
	}
	byName := map[string]secrets.SecretInfo{}
	for _, i := range infos {
		byName[i.Name] = i
	}
	var errs []error
	for i, gr := range gs {
		info, ok := byName[gr.Secret]
		if !ok {
			continue // reported by the store
		}
		where := fmt.Sprintf("grant %d (id %q, secret %q)", i+1, gr.ID, gr.Secret)
		switch info.Backend {
		case secrets.BackendGitHubApp:
			if err := githubapp.ValidateScope(gr.Scope); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
			}
		case secrets.BackendVault:
			mode := info.Params[vault.ParamMode]
			if (mode == "" || mode == vault.ModeToken) && strings.TrimSpace(gr.Scope[vault.ScopePolicies]) == "" {
				errs = append(errs, fmt.Errorf("%s: scope %s: required for a vault token secret (--scope %s=a,b)", where, vault.ScopePolicies, vault.ScopePolicies))
			}
		case secrets.BackendBuiltin:
			if len(gr.Scope) > 0 {
				errs = append(errs, fmt.Errorf("%s: scope: the builtin backend has no scope", where))
			}
		}
	}
	return errors.Join(errs...)
}

func newGrantAddCmd(g *globals) *cobra.Command {
	var (
		gr     secrets.Grant
		source string
		deliv  string
		scope  []string
	)
	cmd := &cobra.Command{
		Use:   "add SECRET --repo PATTERN --deliver env|file|proxy|mtls [flags]",
		Short: "Allow jobs of matching repos/refs/environments to receive a secret",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			gr.Secret = args[0]
			gr.Source = job.Source(source)
			gr.Delivery = job.Delivery(deliv)
			sc, err := parseKeyValues(scope, "scope")
			if err != nil {
				return err
			}
			if len(sc) > 0 {
				gr.Scope = sc
			}
			return withSecretStore(g, func(st *secrets.Store) error {
				if err := checkGrantsForBackends(st, []secrets.Grant{gr}); err != nil {
					return err
				}
				out, err := st.AddGrant(gr)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "grant %s added: %s\n", out.ID, describeGrant(out))
				return err
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&gr.Repo, "repo", "", "repository pattern (group/project, group/*, group/**)")
	fl.StringArrayVar(&gr.Refs, "ref", nil, "ref pattern (repeatable; none = any ref)")
	fl.BoolVar(&gr.ProtectedOnly, "protected-only", false, "only protected refs")
	fl.StringArrayVar(&gr.Envs, "env", nil, "environment pattern (repeatable; none = any)")
	fl.StringVar(&source, "source", "", "job source: gitlab, github or local (default any)")
	fl.StringArrayVar(&gr.Events, "event", nil, "GitHub event pattern, e.g. push (repeatable; none = any)")
	fl.BoolVar(&gr.AllowForks, "allow-forks", false, "also grant to jobs running code from a fork (refused by default)")
	fl.StringVar(&gr.Instance, "instance", "", "coordinator instance URL, e.g. https://gitlab.example.com (default any)")
	fl.StringVar(&deliv, "deliver", "", "delivery: env, file, proxy or mtls (a client certificate the gateway presents; the job gets nothing)")
	fl.StringVar(&gr.Var, "var", "", "default variable name (the job's declaration wins)")
	fl.DurationVar(&gr.TTL, "ttl", 0, "credential lifetime (default and cap: job timeout + slack)")
	fl.StringArrayVar(&gr.Hosts, "host", nil, "proxy, mtls: host[:port] the credential is bound to (repeatable)")
	fl.StringVar(&gr.Header, "header", "", "proxy: header template, default '"+secrets.DefaultHeader+"'")
	fl.StringArrayVar(&scope, "scope", nil, "backend scope key=value (vault: policies=a,b; githubapp: contents=read)")
	_ = cmd.MarkFlagRequired("repo")
	_ = cmd.MarkFlagRequired("deliver")
	return cmd
}

func describeGrant(gr secrets.Grant) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s to repo %s", gr.Secret, gr.Repo)
	if len(gr.Refs) > 0 {
		fmt.Fprintf(&b, " ref %s", strings.Join(gr.Refs, "|"))
	}
	if gr.ProtectedOnly {
		b.WriteString(" (protected only)")
	}
	if len(gr.Envs) > 0 {
		fmt.Fprintf(&b, " env %s", strings.Join(gr.Envs, "|"))
	}
	if gr.Source != "" {
		fmt.Fprintf(&b, " from %s", gr.Source)
	}
	if gr.Instance != "" {
		fmt.Fprintf(&b, " of %s", gr.Instance)
	}
	fmt.Fprintf(&b, ", delivered by %s", gr.Delivery)
	if len(gr.Hosts) > 0 {
		fmt.Fprintf(&b, " for %s", strings.Join(gr.Hosts, ","))
	}
	return b.String()
}

func starIfEmpty(ss []string) string {
	if len(ss) == 0 {
		return "*"
	}
	return strings.Join(ss, ",")
}

func newGrantLsCmd(g *globals) *cobra.Command {
	var repo string
	cmd := &cobra.Command{
		Use:   "ls [--repo REPO]",
		Short: "List grants (with --repo: those whose pattern matches the repo)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return readSecretStore(g, func(st *secrets.Store) error {
				gs, err := st.Grants()
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tSECRET\tREPO\tREFS\tPROTECTED\tENVS\tSOURCE\tDELIVER\tVAR\tTTL\tHOSTS\tSCOPE")
				for _, gr := range gs {
					if repo != "" && gr.Repo != repo && !secrets.MatchPattern(gr.Repo, repo) {
						continue
					}
					ttl := "-"
					if gr.TTL > 0 {
						ttl = gr.TTL.String()
					}
					var sc []string
					for k, v := range gr.Scope {
						sc = append(sc, k+"="+v)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", gr.ID, gr.Secret, gr.Repo, starIfEmpty(gr.Refs),
						gr.ProtectedOnly, starIfEmpty(gr.Envs), dashIfEmpty(string(gr.Source)), gr.Delivery, dashIfEmpty(gr.Var), ttl,
						dashIfEmpty(strings.Join(gr.Hosts, ",")), dashIfEmpty(strings.Join(sc, ",")))
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().StringVar(&repo, "repo", "", "only grants whose repo pattern matches this repo")
	return cmd
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newGrantRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm ID",
		Short: "Remove a grant",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return readSecretStore(g, func(st *secrets.Store) error {
				if err := st.DeleteGrant(args[0]); err != nil {
					return err
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "grant %s removed\n", args[0])
				return err
			})
		},
	}
}

func newGrantCheckCmd(g *globals) *cobra.Command {
	var (
		id            secrets.JobIdentity
		source, deliv string
		varName       string
	)
	cmd := &cobra.Command{
		Use:   "check --repo R --ref F [--protected] [--env E] [--source S] [--deliver D] SECRET",
		Short: "Explain whether a job would receive a secret: the matching grant, or why each grant does not match",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id.Source = job.Source(source)
			req := job.SecretRequest{Name: args[0], Var: varName, Delivery: job.Delivery(deliv)}
			return readSecretStore(g, func(st *secrets.Store) error {
				d, err := st.Decide(id, req)
				if err != nil {
					return err
				}
				return explainDecision(cmd.OutOrStdout(), d)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&id.Repo, "repo", "", "repository (group/project)")
	fl.StringVar(&id.Ref, "ref", "", "branch or tag")
	fl.BoolVar(&id.Protected, "protected", false, "the ref is protected")
	fl.StringVar(&id.Environment, "env", "", "environment")
	fl.StringVar(&source, "source", "", "job source: gitlab, github or local")
	fl.StringVar(&deliv, "deliver", "", "delivery the job requests (default: as granted)")
	fl.StringVar(&varName, "var", "", "variable the job declares")
	_ = cmd.MarkFlagRequired("repo")
	_ = cmd.MarkFlagRequired("ref")
	return cmd
}

// explainDecision prints a decision; a refusal is returned as exit code 1.
func explainDecision(w io.Writer, d secrets.Decision) error {
	if d.Allowed() {
		gr := d.Grant
		fmt.Fprintf(w, "ALLOWED: grant %s matches (%s)\n", gr.ID, describeGrant(*gr))
		fmt.Fprintf(w, "  delivered by %s in %s", gr.Delivery, d.VarName())
		if gr.TTL > 0 {
			fmt.Fprintf(w, ", ttl %s", gr.TTL)
		}
		fmt.Fprintln(w)
		return nil
	}
	fmt.Fprintf(w, "DENIED: %s is not granted to repo %s ref %s (protected: %t) environment %q source %q\n",
		d.Request.Name, d.Identity.Repo, d.Identity.Ref, d.Identity.Protected, d.Identity.Environment, d.Identity.Source)
	if len(d.NearMisses) == 0 {
		fmt.Fprintf(w, "  no grant exists for secret %s\n", d.Request.Name)
	}
	for _, nm := range d.NearMisses {
		fmt.Fprintf(w, "  grant %s (%s) does not match:\n", nm.Grant.ID, describeGrant(nm.Grant))
		for _, r := range nm.Reasons {
			fmt.Fprintf(w, "    - %s\n", r)
		}
	}
	fmt.Fprintf(w, "to allow it: %s\n", d.Suggestion())
	return &exitError{code: 1}
}

func newGrantExportCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "export",
		Short: "Write every grant as TOML to stdout",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return readSecretStore(g, func(st *secrets.Store) error {
				gs, err := st.Grants()
				if err != nil {
					return err
				}
				return secrets.ExportGrants(cmd.OutOrStdout(), gs)
			})
		},
	}
}

func newGrantImportCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "import FILE",
		Short: "Add (or replace, by id) the grants of a TOML file; nothing is written unless every entry is valid",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r io.Reader = cmd.InOrStdin()
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return fmt.Errorf("opening grant file: %w", err)
				}
				defer f.Close()
				r = f
			}
			gs, err := secrets.ParseGrants(r)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return withSecretStore(g, func(st *secrets.Store) error {
				if err := checkGrantsForBackends(st, gs); err != nil {
					return fmt.Errorf("%s: %w", args[0], err)
				}
				out, err := st.PutGrants(gs)
				if err != nil {
					return fmt.Errorf("%s: %w", args[0], err)
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "imported %d grant(s) at %s\n", len(out), time.Now().UTC().Format(time.RFC3339))
				return err
			})
		},
	}
}
