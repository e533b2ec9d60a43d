package main

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/airlock-ci/airlock/audit"
	"github.com/spf13/cobra"
)

func init() { addCommand(newAuditCmd) }

func auditStateDir(g *globals) string {
	if g.StateDir == "" {
		return "/var/lib/airlock"
	}
	return g.StateDir
}

func newAuditCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Verify, show and learn from job audit trails",
	}
	cmd.AddCommand(newAuditVerifyCmd(g), newAuditShowCmd(), newAuditSuggestCmd(), newAuditPubkeyCmd(g))
	return cmd
}

func newAuditVerifyCmd(g *globals) *cobra.Command {
	var pubkey string
	cmd := &cobra.Command{
		Use:   "verify FILE...",
		Short: "Check hash chain, tree hash and signature of audit trails",
		Long: `Verify checks every record's hash and prev link, the seq numbering, and
the seal: record count, final hash, RFC 6962 tree hash and the Ed25519
signature of its checkpoint. It exits 0 only when every file is intact
and signed by the key (default: the runner key in the state directory).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pub, err := auditPublicKey(g, pubkey)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			bad := 0
			for _, path := range args {
				rep, err := verifyTrailFile(path, pub)
				if err != nil {
					bad++
					fmt.Fprintf(out, "%s: %v\n", path, err)
					continue
				}
				fmt.Fprintf(out, "%s: ok: job %s, %d records, sealed (%s), signed by %s\n",
					path, rep.Job, rep.Records, rep.SealReason, rep.SignerKey)
			}
			if bad > 0 {
				return &exitError{code: 1, msg: fmt.Sprintf("%d of %d trails failed verification", bad, len(args))}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&pubkey, "pubkey", "", "public key (verifier key, base64, or a file holding one); default: the state directory's audit key")
	return cmd
}

// auditPublicKey returns the keys a trail may be signed by: --pubkey,
// else the state directory's audit key and, in fleet mode, every host's
// registered key.
func auditPublicKey(g *globals, flag string) ([]ed25519.PublicKey, error) {
	if flag != "" {
		k, err := audit.ParsePublicKey(flag)
		return []ed25519.PublicKey{k}, err
	}
	var keys []ed25519.PublicKey
	k, err := audit.LoadKey(audit.KeyPath(auditStateDir(g)))
	if err == nil {
		keys = append(keys, k.Public())
	}
	fleetKeys, ferr := fleetAuditKeys(g)
	keys = append(keys, fleetKeys...)
	if len(keys) == 0 {
		return nil, fmt.Errorf("loading the runner's audit key (or pass --pubkey): %w", errors.Join(err, ferr))
	}
	return keys, nil
}

// verifyTrailFile verifies path against each key until one signed it.
func verifyTrailFile(path string, pubs []ed25519.PublicKey) (audit.Report, error) {
	var first error
	for _, pub := range pubs {
		f, err := os.Open(path)
		if err != nil {
			return audit.Report{}, err
		}
		rep, err := audit.Verify(f, pub)
		f.Close()
		if err == nil {
			return rep, nil
		}
		if first == nil {
			first = err
		}
	}
	return audit.Report{}, first
}

func readTrailFile(path string) ([]audit.Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return audit.ReadRecords(f)
}

func newAuditShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show FILE",
		Short: "Print an audit trail as a table (does not verify; use verify)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			recs, rerr := readTrailFile(args[0])
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "SEQ\tTIME\tTYPE\tSUMMARY")
			for _, r := range recs {
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", r.Seq, r.Time.Format(time.RFC3339Nano), r.Type, r.Summary())
			}
			if err := w.Flush(); err != nil {
				return err
			}
			if rerr != nil {
				return fmt.Errorf("reading %s: %w", args[0], rerr)
			}
			return nil
		},
	}
}

func newAuditSuggestCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "suggest-policy FILE...",
		Short: "Print the policy and grant commands the observed traffic and secrets need",
		Long: `suggest-policy reads audit trails and prints, per repository (taken from
the job_accepted record), the 'airlock policy set --repo R --egress ...'
line that allows every egress attempt seen (allowed or denied), and an
'airlock grant add SECRET --repo R ...' line for every secret whose grant
was denied.
Review the output before running it: it allows everything the job tried.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var trails [][]audit.Record
			var errs []error
			for _, path := range args {
				recs, err := readTrailFile(path)
				if err != nil {
					errs = append(errs, fmt.Errorf("reading %s: %w", path, err))
				}
				trails = append(trails, recs)
			}
			for _, line := range audit.SuggestPolicy(trails) {
				fmt.Fprintln(cmd.OutOrStdout(), line)
			}
			return errors.Join(errs...)
		},
	}
}

func newAuditPubkeyCmd(g *globals) *cobra.Command {
	var raw, register bool
	cmd := &cobra.Command{
		Use:   "pubkey",
		Short: "Print the runner's audit public key (creating the key on first use)",
		Long: `pubkey prints the public half of <state>/audit.key in the sumdb note
verifier-key format (name+hash+base64), which 'airlock audit verify
--pubkey' accepts; --base64 prints the raw 32-byte Ed25519 key instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := audit.LoadOrCreateKey(audit.KeyPath(auditStateDir(g)))
			if err != nil {
				return err
			}
			if register {
				if err := registerAuditKey(g, k.VerifierKey()); err != nil {
					return err
				}
			}
			if raw {
				_, err = fmt.Fprintln(cmd.OutOrStdout(), base64.StdEncoding.EncodeToString(k.Public()))
			} else {
				_, err = fmt.Fprintln(cmd.OutOrStdout(), k.VerifierKey())
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&raw, "base64", false, "print the raw Ed25519 public key in base64")
	cmd.Flags().BoolVar(&register, "register", false, "also register the key with the fleet store ([store] backend = \"etcd\"), so that every host verifies this host's trails")
	return cmd
}
