package identity_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/quarrynet/quarry/internal/identity"
)

func seed(b byte) []byte { return bytes.Repeat([]byte{b}, identity.SeedSize) }

func mustSeed(t *testing.T, b byte) *identity.Key {
	t.Helper()
	k, err := identity.FromSeed(seed(b))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestGenerateGivesDistinctEd25519PeerIDs(t *testing.T) {
	a, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	b, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if a.PeerID() == b.PeerID() {
		t.Fatalf("two generated keys share peer ID %s", a.PeerID())
	}
	// ed25519 peer IDs in base58 start with 12D3KooW (identity multihash).
	if s := a.PeerID().String(); !strings.HasPrefix(s, "12D3KooW") {
		t.Fatalf("peer ID %s is not an inlined ed25519 ID", s)
	}
	if !a.PeerID().MatchesPrivateKey(a.PrivKey()) || !a.PeerID().MatchesPublicKey(a.PubKey()) {
		t.Fatal("peer ID does not match its own key")
	}
}

func TestFromSeedIsDeterministic(t *testing.T) {
	if a, b := mustSeed(t, 7), mustSeed(t, 7); a.PeerID() != b.PeerID() {
		t.Fatalf("same seed, different IDs: %s %s", a.PeerID(), b.PeerID())
	}
	if a, b := mustSeed(t, 7), mustSeed(t, 8); a.PeerID() == b.PeerID() {
		t.Fatal("different seeds gave the same ID")
	}
	if _, err := identity.FromSeed(make([]byte, 31)); err == nil {
		t.Fatal("31-byte seed accepted")
	}
}

func TestRejectsNonEd25519(t *testing.T) {
	priv, _, err := crypto.GenerateSecp256k1Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := identity.FromPrivKey(priv); !errors.Is(err, identity.ErrNotEd25519) {
		t.Fatalf("FromPrivKey(secp256k1) = %v, want ErrNotEd25519", err)
	}
	b, err := crypto.MarshalPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := identity.Unmarshal(b); !errors.Is(err, identity.ErrNotEd25519) {
		t.Fatalf("Unmarshal(secp256k1) = %v, want ErrNotEd25519", err)
	}
}

func TestMarshalRoundTripIsLibp2pEncoding(t *testing.T) {
	k := mustSeed(t, 1)
	b, err := k.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// The file format is libp2p's own: plain crypto.UnmarshalPrivateKey reads it.
	priv, err := crypto.UnmarshalPrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	if !priv.Equals(k.PrivKey()) {
		t.Fatal("libp2p decodes a different key")
	}
	k2, err := identity.Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if k2.PeerID() != k.PeerID() {
		t.Fatalf("round trip changed peer ID: %s → %s", k.PeerID(), k2.PeerID())
	}
	if _, err := identity.Unmarshal([]byte("not a key")); err == nil {
		t.Fatal("garbage decoded as a key")
	}
}

func TestSignVerify(t *testing.T) {
	alice, bob := mustSeed(t, 1), mustSeed(t, 2)
	msg := []byte("quarry/test/v1\x00transfer 10 to bob")
	sig, err := alice.Sign(msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.Verify(alice.PeerID(), msg, sig); err != nil {
		t.Fatalf("valid signature rejected: %v", err)
	}

	tampered := append([]byte(nil), msg...)
	tampered[len(tampered)-1] ^= 1
	badSig := append([]byte(nil), sig...)
	badSig[0] ^= 1
	for name, tc := range map[string]struct {
		id       peer.ID
		msg, sig []byte
	}{
		"other signer":     {bob.PeerID(), msg, sig},
		"tampered message": {alice.PeerID(), tampered, sig},
		"tampered sig":     {alice.PeerID(), msg, badSig},
		"short sig":        {alice.PeerID(), msg, sig[:10]},
	} {
		if err := identity.Verify(tc.id, tc.msg, tc.sig); !errors.Is(err, identity.ErrBadSignature) {
			t.Errorf("%s: Verify = %v, want ErrBadSignature", name, err)
		}
	}

	if err := identity.Verify("", msg, sig); err == nil || errors.Is(err, identity.ErrBadSignature) {
		t.Errorf("empty peer ID: Verify = %v, want an invalid-ID error", err)
	}
	// An RSA-style ID hashes its key, so it cannot be verified from the address.
	rsaLike, err := peer.Decode("QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN")
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.Verify(rsaLike, msg, sig); !errors.Is(err, identity.ErrNotEd25519) {
		t.Errorf("hashed peer ID: Verify = %v, want ErrNotEd25519", err)
	}
}

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys", "self.key") // parent does not exist yet
	k := mustSeed(t, 3)
	if err := identity.Save(path, k); err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", perm)
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if perm := di.Mode().Perm(); perm != 0o700 {
		t.Fatalf("key dir mode %04o, want 0700", perm)
	}
	want, _ := k.Marshal()
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
		t.Fatalf("file holds %x, want crypto.MarshalPrivateKey bytes %x", got, want)
	}

	loaded, err := identity.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.PeerID() != k.PeerID() {
		t.Fatalf("loaded %s, saved %s", loaded.PeerID(), k.PeerID())
	}
	assertNoTempFiles(t, filepath.Dir(path))
}

func TestSaveNeverOverwrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "self.key")
	first, second := mustSeed(t, 1), mustSeed(t, 2)
	if err := identity.Save(path, first); err != nil {
		t.Fatal(err)
	}
	err := identity.Save(path, second)
	if !errors.Is(err, identity.ErrExists) {
		t.Fatalf("second Save = %v, want ErrExists", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the file", err)
	}
	if got := mustLoad(t, path); got.PeerID() != first.PeerID() {
		t.Fatalf("Save overwrote the key: now %s, was %s", got.PeerID(), first.PeerID())
	}

	if err := identity.Replace(path, second); err != nil {
		t.Fatalf("Replace: %v", err)
	}
	if got := mustLoad(t, path); got.PeerID() != second.PeerID() {
		t.Fatalf("Replace did not replace: %s", got.PeerID())
	}
	assertNoTempFiles(t, filepath.Dir(path))
}

func TestConcurrentSavesOneWinner(t *testing.T) {
	path := filepath.Join(t.TempDir(), "self.key")
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	keys := make([]*identity.Key, n)
	for i := range n {
		keys[i] = mustSeed(t, byte(10+i))
		wg.Go(func() { errs[i] = identity.Save(path, keys[i]) })
	}
	wg.Wait()
	var winner *identity.Key
	for i, err := range errs {
		switch {
		case err == nil:
			if winner != nil {
				t.Fatal("two concurrent Saves both succeeded")
			}
			winner = keys[i]
		case !errors.Is(err, identity.ErrExists):
			t.Fatalf("Save %d: %v", i, err)
		}
	}
	if winner == nil {
		t.Fatal("no Save succeeded")
	}
	if got := mustLoad(t, path); got.PeerID() != winner.PeerID() {
		t.Fatalf("file holds %s, winner was %s", got.PeerID(), winner.PeerID())
	}
	assertNoTempFiles(t, filepath.Dir(path))
}

func TestLoadRefusesExposedKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "self.key")
	if err := identity.Save(path, mustSeed(t, 4)); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []fs.FileMode{0o640, 0o604, 0o644, 0o620, 0o601} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := identity.Load(path)
		if !errors.Is(err, identity.ErrInsecurePermissions) {
			t.Fatalf("mode %04o: Load = %v, want ErrInsecurePermissions", mode, err)
		}
		if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, "chmod 600") {
			t.Errorf("mode %04o: error %q should name the file and the fix", mode, msg)
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.Load(path); err != nil {
		t.Fatalf("owner-read-only key refused: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := identity.Load(filepath.Join(dir, "missing.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
	if _, err := identity.Load(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v, want not-a-regular-file error", err)
	}
	garbage := filepath.Join(dir, "garbage.key")
	if err := os.WriteFile(garbage, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.Load(garbage); err == nil || !strings.Contains(err.Error(), garbage) {
		t.Errorf("garbage file: %v, want a decode error naming the file", err)
	}
	big := filepath.Join(dir, "big.key")
	if err := os.WriteFile(big, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.Load(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("1 MiB file: %v, want a size error", err)
	}
}

func mustLoad(t *testing.T, path string) *identity.Key {
	t.Helper()
	k, err := identity.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}
