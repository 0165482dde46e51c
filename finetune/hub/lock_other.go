//go:build !unix

package hub

// lockFile is a no-op where flock is unavailable: concurrent downloads of
// one blob then race, and the last rename wins with identical content.
func lockFile(path string) (func(), error) { return func() {}, nil }

func freeSpace(dir string) int64 { return -1 }
