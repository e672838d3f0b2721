package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/quarrynet/quarry/storage"
)

// openStore opens the repo's piece store (creating the repo if needed).
func (g *globals) openStore() (*storage.Store, error) {
	dir, err := g.repoDir()
	if err != nil {
		return nil, err
	}
	s, err := storage.Open(storage.Config{Dir: filepath.Join(dir, "store")})
	if err != nil {
		return nil, fmt.Errorf("open repo %s: %w", dir, err)
	}
	return s, nil
}

// parseCID parses a CID argument with an error that says what was wrong.
func parseCID(s string) (cid.Cid, error) {
	c, err := cid.Decode(s)
	if err != nil {
		return cid.Undef, fmt.Errorf("%q is not a valid CID: %v", s, err)
	}
	return c, nil
}

// progress returns a byte progress bar on stderr when stderr is a terminal,
// and a no-op otherwise (piped output stays clean).
func (g *globals) progress(total int64, what string) *progressbar.ProgressBar {
	f, ok := g.stderr.(*os.File)
	visible := ok && term.IsTerminal(int(f.Fd()))
	return progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(g.stderr),
		progressbar.OptionSetVisibility(visible),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowBytes(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetWidth(30),
	)
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
