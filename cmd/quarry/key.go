package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"regexp"

	"github.com/spf13/cobra"

	"github.com/quarrynet/quarry/internal/identity"
)

// defaultKeyName is the key a node or client uses as itself.
const defaultKeyName = "self"

// keyNameRE keeps key names usable as file names everywhere: no separators,
// no leading dot (hidden, or "." / "..").
var keyNameRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$`)

// keyPath is where key name lives in repo: <repo>/keys/<name>.key.
func keyPath(repo, name string) (string, error) {
	if !keyNameRE.MatchString(name) {
		return "", fmt.Errorf("invalid key name %q: use up to 64 letters, digits, '.', '_' or '-', not starting with '.'", name)
	}
	return filepath.Join(repo, "keys", name+".key"), nil
}

// newKeyCmd is `quarry key`: the identity keys in the repo returned by repo.
func newKeyCmd(repo func() (string, error)) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Create and show identity keys (ed25519; the peer ID is the address)",
		Long: `Identity keys live in <repo>/keys/<name>.key, readable by their owner only.
The key named "self" is the one this repo acts as. A key's peer ID is its
address: on the ledger, in deals, and on every authenticated connection.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newKeyNewCmd(repo), newKeyShowCmd(repo))
	return cmd
}

func newKeyNewCmd(repo func() (string, error)) *cobra.Command {
	var name string
	var force bool
	cmd := &cobra.Command{
		Use:   "new",
		Short: "Generate a new key and print its peer ID",
		Long: `Generate a new ed25519 key, store it as <repo>/keys/<name>.key (mode 0600)
and print its peer ID. An existing key is never replaced without --force.`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := repo()
			if err != nil {
				return err
			}
			path, err := keyPath(dir, name)
			if err != nil {
				return err
			}
			k, err := identity.Generate()
			if err != nil {
				return err
			}
			save := identity.Save
			if force {
				save = identity.Replace
			}
			if err := save(path, k); err != nil {
				if errors.Is(err, identity.ErrExists) {
					return existsError(name, path)
				}
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "new key %q saved to %s\n", name, path)
			_, err = fmt.Fprintln(cmd.OutOrStdout(), k.PeerID())
			return err
		},
	}
	cmd.Flags().StringVar(&name, "name", defaultKeyName, "key name")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing key of that name (the old key is lost)")
	return cmd
}

// existsError explains a refused `key new`, naming the key that is kept.
func existsError(name, path string) error {
	what := fmt.Sprintf("key %q already exists at %s", name, path)
	if old, err := identity.Load(path); err == nil {
		what = fmt.Sprintf("key %q already exists at %s (peer ID %s)", name, path, old.PeerID())
	}
	return fmt.Errorf("%s; kept it. To replace it (losing everything bound to its address) use --force, or pick another --name", what)
}

// keyInfo is `quarry key show --json`.
type keyInfo struct {
	Name   string `json:"name"`
	PeerID string `json:"peer_id"`
	Path   string `json:"path"`
}

func newKeyShowCmd(repo func() (string, error)) *cobra.Command {
	var name string
	var asJSON bool
	cmd := &cobra.Command{
		Use:          "show",
		Short:        "Print a key's peer ID",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := repo()
			if err != nil {
				return err
			}
			path, err := keyPath(dir, name)
			if err != nil {
				return err
			}
			k, err := identity.Load(path)
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("no key %q in %s; create one with: quarry key new --name %s", name, filepath.Dir(path), name)
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(keyInfo{Name: name, PeerID: k.PeerID().String(), Path: path})
			}
			_, err = fmt.Fprintln(out, k.PeerID())
			return err
		},
	}
	cmd.Flags().StringVar(&name, "name", defaultKeyName, "key name")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print name, peer_id and path as JSON")
	return cmd
}
