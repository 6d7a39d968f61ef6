// Package artifact is the writ format: a short-lived JWS (typ writ+jwt,
// ES256) that authorizes one exact action for one SVID on one node state.
//
// The broker signs writs with Sign; relying parties (writ exec, the
// gateway, the enforce middleware) check them with Verify, which runs a
// fixed sequence of checks and refuses with a stable Reason code at the
// first failure. Actions are bound by the digest of their canonical
// encoding (Action.Canonical); writ verification keys travel in the SPIFFE
// trust bundle as "use": "writ" JWKs (AddToBundle, KeysFromBundle).
//
// The package is pure: no TPM, store or network. The specification, with
// the canonical action encoding byte for byte, is docs/writ-format.md; the
// test vectors are in testdata/vectors.json.
package artifact
