package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/airlock-ci/airlock/netpolicy"
	"github.com/airlock-ci/airlock/secrets"
)

func init() { addCommand(newPolicyCmd) }

func newPolicyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Manage egress ceilings by repository pattern",
		Long: `An egress ceiling is the most a repository's jobs may reach: a job's effective
egress is the ceiling intersected with what it declares. For a repository the
most specific matching pattern wins (an exact repo over group/* over group/**);
ceilings are not added up. A ceiling may be bound to one coordinator instance
(--instance https://gitlab.example.com): the same repo path on another instance
is another project. Of two equally specific patterns the instance's own wins.
Without a matching ceiling a job reaches nothing beyond what the runner itself
needs.`,
	}
	cmd.AddCommand(newPolicySetCmd(g), newPolicyLsCmd(g), newPolicyRmCmd(g))
	return cmd
}

func newPolicySetCmd(g *globals) *cobra.Command {
	var p secrets.EgressPolicy
	cmd := &cobra.Command{
		Use:   "set --repo PATTERN [--instance URL] --egress host:port,... [--audit]",
		Short: "Create or replace the egress ceiling of a repo pattern",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := netpolicy.ParseEntries(p.Egress); err != nil {
				return fmt.Errorf("--egress: %w", err)
			}
			return withSecretStore(g, func(st *secrets.Store) error {
				if err := st.SetPolicy(p); err != nil {
					return err
				}
				mode := p.LeakScan
				if mode == "" {
					mode = "warn"
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "egress ceiling for %s: %s (leak scan: %s)\n", p.Scope(), strings.Join(p.Egress, ","), mode)
				return err
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&p.RepoPattern, "repo", "", "repository pattern")
	fl.StringVar(&p.Instance, "instance", "", "only for jobs of this coordinator instance (its URL); default: any")
	fl.StringSliceVar(&p.Egress, "egress", nil, "allowed host[:port] entries, comma-separated (empty: nothing)")
	fl.BoolVar(&p.Audit, "audit", false, "audit mode: let every name through the gateway and record it (onboard a repo, then `airlock audit suggest-policy`)")
	fl.StringVar(&p.LeakScan, "leak-scan", "", "scan what each job's change adds for credentials before its code runs: block (fail the job), warn (default; note it in the job log) or off")
	_ = cmd.MarkFlagRequired("repo")
	return cmd
}

func newPolicyLsCmd(g *globals) *cobra.Command {
	var repo, instance string
	cmd := &cobra.Command{
		Use:   "ls [--repo REPO [--instance URL]]",
		Short: "List egress ceilings (with --repo: the one that applies to REPO)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return readSecretStore(g, func(st *secrets.Store) error {
				ps, err := st.Policies()
				if err != nil {
					return err
				}
				if repo != "" {
					p, ok := secrets.Ceiling(ps, repo, instance)
					if !ok {
						_, err := fmt.Fprintf(cmd.OutOrStdout(), "no egress ceiling matches %s: its jobs reach nothing beyond the runner's own needs\n",
							secrets.EgressPolicy{RepoPattern: repo, Instance: instance}.Scope())
						return err
					}
					ps = []secrets.EgressPolicy{p}
				} else if instance != "" {
					return fmt.Errorf("policy ls: --instance needs --repo")
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "REPO\tINSTANCE\tEGRESS\tAUDIT\tLEAK SCAN")
				for _, p := range ps {
					mode := p.LeakScan
					if mode == "" {
						mode = "warn"
					}
					inst := p.Instance
					if inst == "" {
						inst = "any"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%s\n", p.RepoPattern, inst, dashIfEmpty(strings.Join(p.Egress, ",")), p.Audit, mode)
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().StringVar(&repo, "repo", "", "show the ceiling that applies to this repository")
	cmd.Flags().StringVar(&instance, "instance", "", "with --repo: of this coordinator instance (its URL)")
	return cmd
}

func newPolicyRmCmd(g *globals) *cobra.Command {
	var repo, instance string
	cmd := &cobra.Command{
		Use:   "rm --repo PATTERN [--instance URL]",
		Short: "Remove the egress ceiling of a repo pattern",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if repo == "" && len(args) == 1 {
				repo = args[0]
			}
			if repo == "" {
				return fmt.Errorf("policy rm needs --repo PATTERN")
			}
			return readSecretStore(g, func(st *secrets.Store) error {
				if err := st.DeletePolicy(repo, instance); err != nil {
					return err
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "egress ceiling for %s removed\n", secrets.EgressPolicy{RepoPattern: repo, Instance: instance}.Scope())
				return err
			})
		},
	}
	cmd.Flags().StringVar(&repo, "repo", "", "repository pattern")
	cmd.Flags().StringVar(&instance, "instance", "", "the ceiling bound to this coordinator instance (default: the one for any instance)")
	return cmd
}
