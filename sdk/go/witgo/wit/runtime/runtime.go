// Package runtime is the memory side of the canonical ABI for Go guests
// built with wit-bindgen's Go generator: the `cabi_realloc` export through
// which the host copies arguments into the guest, and the pinned
// allocations the generated code lowers results and import arguments into.
//
// Go's garbage collector may move nothing it has pinned, and frees nothing
// still referenced: memory handed to the host is pinned until the
// generated code says it is done with it (`Unpin`, or the pinner it passed
// to `Allocate`).
package runtime

import (
	"runtime"
	"unsafe"
)

// argPinner pins what the host allocated through cabi_realloc for the
// arguments of the export being called, until the export has lifted them
// into Go values (the generated code then calls Unpin).
var argPinner runtime.Pinner

// Allocate returns size bytes aligned to align, zeroed and pinned by
// pinner until it is unpinned. A zero size still returns a valid,
// aligned, non-nil pointer.
func Allocate(pinner *runtime.Pinner, size, align uintptr) unsafe.Pointer {
	if align < 8 {
		align = 8
	}
	// []uint64 is 8-aligned; over-allocate for larger alignments.
	words := (size + align - 8 + 7) / 8
	if words == 0 {
		words = 1
	}
	buf := make([]uint64, words)
	p := unsafe.Pointer(&buf[0])
	if rem := uintptr(p) % align; rem != 0 {
		p = unsafe.Add(p, align-rem)
	}
	pinner.Pin(unsafe.Pointer(&buf[0]))
	return p
}

// Argument memory comes from a chunk allocated *before* the host needs it, so
// cabi_realloc itself never allocates from the Go heap: an allocation there may
// start the garbage collector, which calls WASI (clock_time_get), and the
// canonical ABI forbids calling an import from inside cabi_realloc (the call
// traps: "cannot leave component instance"). Carved memory is never reused —
// lifted values (unsafe.String / unsafe.Slice) may alias it and outlive the
// call — so a used-up chunk is simply dropped and the collector frees it once
// nothing aliases it. Unpin, which the generated code calls in every export
// after lifting its arguments (outside cabi_realloc), tops the chunk up.
const (
	chunkBytes   = 4 << 20 // one chunk
	chunkReserve = 2 << 20 // free bytes kept for the next call's arguments
)

var (
	chunk       []uint64
	chunkUsed   uintptr // bytes carved from chunk
	chunkPinner runtime.Pinner
)

func init() { refill() }

// refill starts a new chunk when the current one has less than chunkReserve
// bytes left. Never called from cabi_realloc.
func refill() {
	if uintptr(len(chunk))*8-chunkUsed >= chunkReserve {
		return
	}
	chunkPinner.Unpin()
	chunk = make([]uint64, chunkBytes/8)
	chunkUsed = 0
	chunkPinner.Pin(unsafe.Pointer(&chunk[0]))
}

// carve returns size bytes aligned to align from the chunk, or nil when the
// chunk cannot hold them. It does not allocate.
func carve(size, align uintptr) unsafe.Pointer {
	if align < 8 {
		align = 8
	}
	if size == 0 {
		size = 1
	}
	if len(chunk) == 0 {
		return nil
	}
	base := unsafe.Pointer(&chunk[0])
	start := (uintptr(base) + chunkUsed + align - 1) &^ (align - 1)
	offset := start - uintptr(base)
	if offset+size > uintptr(len(chunk))*8 {
		return nil
	}
	chunkUsed = offset + size
	return unsafe.Add(base, offset)
}

// Unpin releases what cabi_realloc pinned for the current call's arguments
// and makes room for the next call's.
func Unpin() {
	argPinner.Unpin()
	refill()
}

// cabiRealloc is the canonical ABI's allocator: the host calls it to make
// room for arguments (old == nil) or to grow a buffer it filled.
//
//go:wasmexport cabi_realloc
func cabiRealloc(old unsafe.Pointer, oldSize, align, newSize uintptr) unsafe.Pointer {
	if old != nil && newSize <= oldSize {
		return old
	}
	p := carve(newSize, align)
	if p == nil {
		// One call's arguments beyond the reserve (more than 2 MiB): the Go heap,
		// with the collector hazard above. The next Unpin starts a fresh chunk.
		p = Allocate(&argPinner, newSize, align)
	}
	if old != nil && oldSize > 0 {
		copy(unsafe.Slice((*byte)(p), oldSize), unsafe.Slice((*byte)(old), oldSize))
	}
	return p
}
