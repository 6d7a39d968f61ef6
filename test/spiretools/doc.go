// Package spiretools pins SPIRE v1.13.3's server and agent as Go tools in a
// module of their own, so SPIRE's dependency graph stays out of writ's
// go.mod. `make spire` builds both into the user's cache once per machine;
// `make test-spire` runs the tests in test/spire against them.
package spiretools
