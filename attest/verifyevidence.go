package attest

// VerifyEvidence checks that evidence is what the node's TPM produced for
// this nonce, before anything is appraised, recorded or acted on:
//
//  1. the quote's framing (scanAttest): quote_malformed
//  2. akPublic is an ECC P-256 signing key: ak_invalid
//  3. the quote decodes and is a TPM-generated quote: quote_malformed
//  4. the signature decodes, is ECDSA SHA-256 and verifies with the AK:
//     quote_bad_signature
//  5. the quote's extraData is the nonce: nonce_mismatch
//  6. the quote's PCR selection is the policy's: pcr_selection_mismatch
//  7. the PCR values sent hash to the quoted digest: pcr_mismatch
//
// It returns the digest of the policy's boot PCRs ("sha256:<hex>"). After
// it passes, ev.PCRs are the TPM's values and AppraiseEventLog may trust
// them. It is pure: it changes nothing, so a caller may refuse evidence
// that fails it without a trace of that evidence anywhere.
func VerifyEvidence(akPublic, nonce []byte, ev Evidence, p *Policy) (string, error) {
	if err := scanAttest(ev.Quote); err != nil {
		return "", fail(ReasonQuoteMalformed, NoPCR, err, "quote does not decode: %v", err)
	}
	var a Appraisal
	if err := a.verifyQuote(akPublic, nonce, ev, p); err != nil {
		return "", err
	}
	return a.PCRDigest, nil
}

// ScanKeyParams checks the framing of a certified key's creation
// attestation before it is decoded: key_not_certified.
func ScanKeyParams(k KeyParams) error {
	if err := scanAttest(k.CreateAttestation); err != nil {
		return fail(ReasonKeyNotCertified, NoPCR, err, "key certification does not decode: %v", err)
	}
	return nil
}

// ScanAK checks the framing of an AK's creation attestation before it is
// decoded (CheckAK, NewChallenge): ak_invalid.
func ScanAK(k KeyParams) error {
	if err := scanAttest(k.CreateAttestation); err != nil {
		return fail(ReasonAKInvalid, NoPCR, err, "attestation key creation does not decode: %v", err)
	}
	return nil
}
