package attest

// The pre-scans, for the tests of package attest_test.
var (
	ScanEventLog = scanEventLog
	ScanAttest   = scanAttest
)
