package hugepage

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestAllocShape(t *testing.T) {
	for _, n := range []int{1, 4096, Size - 1, Size, 3*Size + 12345, 8 * Size} {
		b := Alloc(n)
		if len(b) != n || cap(b) != n {
			t.Fatalf("Alloc(%d): len %d cap %d", n, len(b), cap(b))
		}
		if a := uintptr(unsafe.Pointer(&b[0])) % Size; a != 0 {
			t.Fatalf("Alloc(%d): start %#x is %d bytes past a %d boundary", n, uintptr(unsafe.Pointer(&b[0])), a, Size)
		}
		for i, c := range b {
			if c != 0 {
				t.Fatalf("Alloc(%d): byte %d is %d, want 0", n, i, c)
			}
		}
		for i := range b {
			b[i] = byte(i)
		}
	}
	if b := Alloc(0); b != nil {
		t.Fatalf("Alloc(0) = %d bytes, want nil", len(b))
	}
}

// TestAllocUsesHugePages checks that a touched buffer from fresh heap
// memory is backed by huge pages where the kernel offers them on madvise.
// Reused heap memory, mapped with small pages, is
// TestAdviseCollapsesSmallPages's case.
func TestAllocUsesHugePages(t *testing.T) {
	requireTHP(t)
	b := Alloc(4 * Size)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	kb, err := anonHugeKB(uintptr(unsafe.Pointer(&b[0])))
	if err != nil {
		t.Fatal(err)
	}
	if kb < Size>>10 {
		t.Fatalf("the mapping holding a touched %d-byte buffer has %d kB of huge pages, want at least %d", len(b), kb, Size>>10)
	}
}

// TestAdviseCollapsesSmallPages checks the case of heap memory that the
// runtime reuses: mapped with small pages before Alloc sees it, it must
// end up in huge pages too.
func TestAdviseCollapsesSmallPages(t *testing.T) {
	requireTHP(t)
	// Memory touched under MADV_NOHUGEPAGE is mapped with small pages: the
	// state of heap memory the runtime hands out again. It is a fresh
	// anonymous mapping, not heap, so that no earlier huge page is reused;
	// advise's MADV_HUGEPAGE lifts the NOHUGEPAGE advice.
	touched := func(fill func(i int) byte) (b []byte, unmap func()) {
		raw, err := unix.Mmap(-1, 0, 5*Size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			t.Fatal(err)
		}
		skip := (Size - int(uintptr(unsafe.Pointer(&raw[0]))%Size)) % Size
		b = raw[skip : skip+4*Size]
		if err := unix.Madvise(b, unix.MADV_NOHUGEPAGE); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(b); i += 4096 {
			b[i] = fill(i)
		}
		if kb, err := anonHugeKB(uintptr(unsafe.Pointer(&b[0]))); err != nil || kb != 0 {
			t.Fatalf("setup: touched memory has %d kB of huge pages (%v), want 0", kb, err)
		}
		return b, func() { unix.Munmap(raw) }
	}
	probe, unmap := touched(func(int) byte { return 1 })
	_ = unix.Madvise(probe, unix.MADV_HUGEPAGE)
	err := unix.Madvise(probe, unix.MADV_COLLAPSE)
	unmap() // before b is mapped, so that the two cannot merge
	if errors.Is(err, unix.EINVAL) {
		t.Skipf("no MADV_COLLAPSE on this kernel: %v", err)
	}
	b, unmap := touched(func(i int) byte { return byte(i / 4096) })
	defer unmap()
	advise(b)
	kb, err := anonHugeKB(uintptr(unsafe.Pointer(&b[0])))
	if err != nil {
		t.Fatal(err)
	}
	if kb < 4*Size>>10 {
		t.Fatalf("after advise, a %d-byte buffer touched with small pages has %d kB of huge pages, want %d", len(b), kb, 4*Size>>10)
	}
	for i := 0; i < len(b); i += 4096 {
		if b[i] != byte(i/4096) {
			t.Fatalf("byte %d changed to %d in the collapse, want %d", i, b[i], byte(i/4096))
		}
	}
}

// requireTHP skips a test on a kernel with transparent huge pages off: an
// environment without the feature under test, not a missing feature.
func requireTHP(t *testing.T) {
	t.Helper()
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || strings.Contains(string(mode), "[never]") {
		t.Skipf("transparent huge pages are off on this kernel (%q, %v)", strings.TrimSpace(string(mode)), err)
	}
}

// anonHugeKB returns AnonHugePages of the /proc/self/smaps mapping that
// holds addr.
func anonHugeKB(addr uintptr) (int, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) > 0 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			lo, hi, ok := strings.Cut(fields[0], "-")
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			in = ok && err1 == nil && err2 == nil && uint64(addr) >= start && uint64(addr) < end
			continue
		}
		if in && len(fields) >= 2 && fields[0] == "AnonHugePages:" {
			return strconv.Atoi(fields[1])
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no mapping in /proc/self/smaps holds %#x", addr)
}
