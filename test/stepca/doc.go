// Package stepca pins step-ca v0.30.2 (github.com/smallstep/certificates,
// with go.step.sm/crypto v0.77.1: newer crypto breaks it) as a Go tool in a
// module of its own, so step-ca's dependency graph stays out of writ's
// go.mod. `make step-ca` builds it into the user's cache once per machine;
// the upstream-CA test in test/ runs it (docs/adr/0035).
package stepca
