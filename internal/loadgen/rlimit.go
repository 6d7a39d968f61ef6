package loadgen

import (
	"fmt"
	"syscall"
)

// raiseFileLimit makes sure the process may hold need descriptors: every
// simulated node holds its own mTLS connection, as an agent holds its
// warm one, so 10,000 nodes need more than 10,000. Go raises the soft
// limit to the hard one at start on Linux; this raises it if something
// lowered it, and otherwise says what to raise rather than fail midway
// with "too many open files", counted as refusals.
func raiseFileLimit(nodes, need int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("loadgen: RLIMIT_NOFILE: %w", err)
	}
	want := uint64(need) //nolint:gosec // G115: need is positive
	if lim.Cur >= want {
		return nil
	}
	if lim.Max < want {
		return fmt.Errorf("loadgen: %d nodes need about %d open files; the hard limit is %d (raise it: ulimit -Hn, LimitNOFILE=)", nodes, want, lim.Max)
	}
	lim.Cur = want
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("loadgen: raise RLIMIT_NOFILE to %d: %w", want, err)
	}
	return nil
}
