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

// Unpin releases what cabi_realloc pinned for the current call's arguments.
func Unpin() {
	argPinner.Unpin()
}

// cabiRealloc is the canonical ABI's allocator: the host calls it to make
// room for arguments (old == nil) or to grow a buffer it filled.
//
//go:wasmexport cabi_realloc
func cabiRealloc(old unsafe.Pointer, oldSize, align, newSize uintptr) unsafe.Pointer {
	if old != nil && newSize <= oldSize {
		return old
	}
	p := Allocate(&argPinner, newSize, align)
	if old != nil && oldSize > 0 {
		copy(unsafe.Slice((*byte)(p), oldSize), unsafe.Slice((*byte)(old), oldSize))
	}
	return p
}
