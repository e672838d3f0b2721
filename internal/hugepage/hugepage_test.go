package hugepage

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"
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

// TestAllocUsesHugePages checks that a touched buffer is backed by huge
// pages where the kernel offers them on madvise.
func TestAllocUsesHugePages(t *testing.T) {
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || strings.Contains(string(mode), "[never]") {
		t.Skipf("transparent huge pages are off on this kernel (%q, %v)", strings.TrimSpace(string(mode)), err)
	}
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
