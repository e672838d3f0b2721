package market

import (
	"fmt"
	"math"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// maxCanonicalDepth bounds message nesting, so hostile input cannot recurse
// deeply.
const maxCanonicalDepth = 16

// CheckCanonical reports whether b is the canonical encoding of a message
// described by md, and wraps ErrMalformed if it is not. Canonical means:
//
//   - fields in strictly increasing field-number order, except that the
//     elements of a repeated non-packed field are consecutive;
//   - tags, varints and lengths minimally encoded;
//   - a field without explicit presence is absent when it holds its
//     default (zero, empty); oneof members and sub-messages may be present
//     with zero content; packed repeated fields are one non-empty record;
//   - bools are 0 or 1, 32-bit integers in their range, strings UTF-8;
//   - no unknown fields, no groups, no maps;
//   - sub-messages canonical in turn.
//
// It is defined by the descriptor alone, so it does not change when the
// protobuf library does. protobuf-go's deterministic marshal produces it.
func CheckCanonical(b []byte, md protoreflect.MessageDescriptor) error {
	if err := checkCanonical(b, md, 0); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, md.Name(), err)
	}
	return nil
}

func checkCanonical(b []byte, md protoreflect.MessageDescriptor, depth int) error {
	if depth > maxCanonicalDepth {
		return fmt.Errorf("nested more than %d deep", maxCanonicalDepth)
	}
	var prev protowire.Number
	var oneofSeen map[protoreflect.FullName]bool
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		if n != protowire.SizeTag(num) {
			return fmt.Errorf("field %d: tag not minimally encoded", num)
		}
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		if fd == nil {
			return fmt.Errorf("unknown field %d", num)
		}
		if fd.IsMap() {
			return fmt.Errorf("field %s: maps have no canonical encoding", fd.Name())
		}
		switch {
		case num > prev:
		case num == prev && fd.IsList() && !fd.IsPacked():
		default:
			return fmt.Errorf("field %s (%d) out of order or repeated", fd.Name(), num)
		}
		if num > prev {
			if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
				if oneofSeen[od.FullName()] {
					return fmt.Errorf("oneof %s set twice", od.Name())
				}
				if oneofSeen == nil {
					oneofSeen = map[protoreflect.FullName]bool{}
				}
				oneofSeen[od.FullName()] = true
			}
		}
		prev = num
		mayBeZero := fd.HasPresence() || fd.IsList()
		if fd.IsList() && fd.IsPacked() {
			if typ != protowire.BytesType {
				return fmt.Errorf("field %s: packed field not length-delimited", fd.Name())
			}
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			if n-len(v) != protowire.SizeVarint(uint64(len(v))) {
				return fmt.Errorf("field %s: length not minimally encoded", fd.Name())
			}
			if len(v) == 0 {
				return fmt.Errorf("field %s: empty packed field", fd.Name())
			}
			b = b[n:]
			for len(v) > 0 {
				m, err := checkScalar(v, fd, wireTypeOf(fd.Kind()), true)
				if err != nil {
					return err
				}
				v = v[m:]
			}
			continue
		}
		if want := wireTypeOf(fd.Kind()); typ != want {
			return fmt.Errorf("field %s: wire type %d, want %d", fd.Name(), typ, want)
		}
		switch fd.Kind() {
		case protoreflect.MessageKind:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			if n-len(v) != protowire.SizeVarint(uint64(len(v))) {
				return fmt.Errorf("field %s: length not minimally encoded", fd.Name())
			}
			if err := checkCanonical(v, fd.Message(), depth+1); err != nil {
				return fmt.Errorf("%s: %w", fd.Name(), err)
			}
			b = b[n:]
		case protoreflect.GroupKind:
			return fmt.Errorf("field %s: groups are not allowed", fd.Name())
		default:
			m, err := checkScalar(b, fd, typ, mayBeZero)
			if err != nil {
				return err
			}
			b = b[m:]
		}
	}
	return nil
}

// checkScalar checks one scalar value at the start of b and returns its
// length.
func checkScalar(b []byte, fd protoreflect.FieldDescriptor, typ protowire.Type, mayBeZero bool) (int, error) {
	zero := func() error {
		if !mayBeZero {
			return fmt.Errorf("field %s: default value encoded", fd.Name())
		}
		return nil
	}
	switch typ {
	case protowire.VarintType:
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		if n != protowire.SizeVarint(v) {
			return 0, fmt.Errorf("field %s: varint not minimally encoded", fd.Name())
		}
		switch fd.Kind() {
		case protoreflect.BoolKind:
			if v > 1 {
				return 0, fmt.Errorf("field %s: bool is %d", fd.Name(), v)
			}
		case protoreflect.Int32Kind, protoreflect.EnumKind:
			if v != uint64(int64(int32(v))) {
				return 0, fmt.Errorf("field %s: not a 32-bit value", fd.Name())
			}
		case protoreflect.Uint32Kind:
			if v > math.MaxUint32 {
				return 0, fmt.Errorf("field %s: not a 32-bit value", fd.Name())
			}
		case protoreflect.Sint32Kind:
			if v > math.MaxUint32 {
				return 0, fmt.Errorf("field %s: not a 32-bit value", fd.Name())
			}
		}
		if v == 0 {
			return n, zero()
		}
		return n, nil
	case protowire.Fixed32Type:
		v, n := protowire.ConsumeFixed32(b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		if v == 0 || (fd.Kind() == protoreflect.FloatKind && v == 1<<31) {
			// Positive and negative zero are both the default.
			return n, zero()
		}
		return n, nil
	case protowire.Fixed64Type:
		v, n := protowire.ConsumeFixed64(b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		if v == 0 || (fd.Kind() == protoreflect.DoubleKind && v == 1<<63) {
			return n, zero()
		}
		return n, nil
	case protowire.BytesType:
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		if n-len(v) != protowire.SizeVarint(uint64(len(v))) {
			return 0, fmt.Errorf("field %s: length not minimally encoded", fd.Name())
		}
		if fd.Kind() == protoreflect.StringKind && !utf8.Valid(v) {
			return 0, fmt.Errorf("field %s: invalid UTF-8", fd.Name())
		}
		if len(v) == 0 {
			return n, zero()
		}
		return n, nil
	}
	return 0, fmt.Errorf("field %s: unexpected wire type %d", fd.Name(), typ)
}

func wireTypeOf(k protoreflect.Kind) protowire.Type {
	switch k {
	case protoreflect.BoolKind, protoreflect.EnumKind,
		protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Uint32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Uint64Kind:
		return protowire.VarintType
	case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
		return protowire.Fixed32Type
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind, protoreflect.DoubleKind:
		return protowire.Fixed64Type
	case protoreflect.GroupKind:
		return protowire.StartGroupType
	default:
		return protowire.BytesType
	}
}
