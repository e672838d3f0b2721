package ledger

import (
	"fmt"
	"os"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/quarrynet/quarry/internal/atomicfile"
	"github.com/quarrynet/quarry/market"
	ledgerv1 "github.com/quarrynet/quarry/proto/quarry/ledger/v1"
)

// ReadGenesisFile reads and validates a genesis written by WriteGenesisFile
// (protobuf JSON; `quarry genesis new` writes one).
func ReadGenesisFile(path string) (*ledgerv1.Genesis, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var gen ledgerv1.Genesis
	if err := protojson.Unmarshal(b, &gen); err != nil {
		return nil, fmt.Errorf("genesis %s is not valid: %v", path, err)
	}
	if _, err := market.ValidateGenesis(&gen); err != nil {
		return nil, fmt.Errorf("genesis %s: %w", path, err)
	}
	return &gen, nil
}

// WriteGenesisFile writes gen as indented protobuf JSON, atomically.
func WriteGenesisFile(path string, gen *ledgerv1.Genesis) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(gen)
	if err != nil {
		return err
	}
	return atomicfile.WriteBytes(path, append(b, '\n'))
}
