package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/airlock-ci/airlock/secrets"
)

func init() { addCommand(newStateCmd) }

func newStateCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "state",
		Short: "Create or re-create the state store (state.db)",
	}
	cmd.AddCommand(newStateInitCmd(g))
	return cmd
}

func newStateInitCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "init [--force]",
		Short: "Create the state store; with --force, move a damaged or emptied one aside and start empty",
		Long: `Create the state store in the state directory if there is none.

airlock refuses to open a state.db that is corrupt, or that is empty while
its key file exists (a store that was lost): re-creating it silently would
drop every secret, grant and revocation journal entry. Restore state.db from
a backup if you can. --force moves the file aside (state.db.broken-<time>)
and starts an empty store with the same key; secrets and grants must then be
set again, and credentials the lost journal tracked are bounded only by
their own TTL.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir := g.StateDir
			if dir == "" {
				dir = secretsDefaultStateDir
			}
			if !force {
				st, err := secrets.Open(dir, secrets.OpenOptions{})
				if err != nil {
					if errors.Is(err, secrets.ErrCorrupt) || errors.Is(err, secrets.ErrEmptyDB) {
						return fmt.Errorf("%w\n(run `airlock state init --force` to start an empty store)", err)
					}
					return err
				}
				if err := st.Close(); err != nil {
					return err
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "state store in %s is ready\n", dir)
				return err
			}
			moved, err := secrets.Reinit(dir)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if moved != "" {
				if _, err := fmt.Fprintf(out, "moved the old state database to %s\n", moved); err != nil {
					return err
				}
			}
			_, err = fmt.Fprintf(out, "started an empty state store in %s: set secrets, grants and policies again\n", dir)
			return err
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "move an existing state.db aside and start an empty store")
	return cmd
}
