package broker

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	"google.golang.org/grpc/codes"

	"github.com/writ-dev/writ/broker/store"
)

// ReasonSPIREMintFailed is the reason when SPIRE did not mint an SVID writ decided to issue.
const ReasonSPIREMintFailed = "spire_mint_failed"

// mints reports whether SPIRE mints the SVIDs (spire.mint_svids).
func (b *Broker) mints() bool { return b.spire != nil && b.cfg.SPIRE.MintSVIDs }

// issueNodeChain issues the node SVID for the TPM key key: by writ's CA,
// or, when SPIRE mints, by SPIRE for the node's CSR, which must be signed
// by that very key (it is the one the AK certified) and name the node:
// csr_invalid otherwise.
func (b *Broker) issueNodeChain(ctx context.Context, node store.Node, id spiffeid.ID, key crypto.PublicKey, csr []byte) ([]*x509.Certificate, error) {
	if !b.mints() {
		chain, err := b.ca.IssueX509SVIDChain(id, key, b.cfg.SVIDTTL)
		if err != nil {
			return nil, b.refuse(ctx, "attest", node.ID, err)
		}
		return chain, nil
	}
	if err := checkNodeCSR(csr, id, key); err != nil {
		return nil, b.deny(ctx, "attest", node.SPIFFEID, ReasonCSRInvalid, codes.InvalidArgument, err.Error())
	}
	chain, err := b.spire.mint(ctx, csr, id, b.cfg.SVIDTTL)
	if err != nil {
		b.log.Error("spire: mint node SVID", logNode, node.SPIFFEID, "err", err)
		return nil, b.deny(ctx, "attest", node.SPIFFEID, ReasonSPIREMintFailed, codes.Unavailable, "SPIRE did not mint the node SVID")
	}
	return chain, nil
}

// checkNodeCSR checks a node's CSR: within its size, its signature
// verifies, its key is the AK-certified key, and it names exactly id.
func checkNodeCSR(der []byte, id spiffeid.ID, key crypto.PublicKey) error {
	if len(der) == 0 {
		return errors.New("broker: the broker has SPIRE mint node SVIDs and the request has no svid_csr")
	}
	pub, err := parseWorkloadCSR(der)
	if err != nil {
		return err
	}
	if !pub.Equal(key) {
		return errors.New("broker: CSR: its key is not the SVID key the AK certified")
	}
	csr, _ := x509.ParseCertificateRequest(der) // parsed by parseWorkloadCSR
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() || len(csr.DNSNames)+len(csr.EmailAddresses)+len(csr.IPAddresses) != 0 {
		return fmt.Errorf("broker: CSR: it must name %s alone", id)
	}
	return nil
}

// issueWorkloadChain issues a workload SVID for the entry: by writ's CA,
// or, when SPIRE mints, by SPIRE for the agent's CSR, which must name the
// entry's SPIFFE ID alone and no DNS name the entry does not list.
func (b *Broker) issueWorkloadChain(ctx context.Context, n standingNode, e store.Entry, id spiffeid.ID, csrDER []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	pub, err := parseWorkloadCSR(csrDER)
	if err != nil {
		return nil, b.deny(ctx, opWorkload, n.id.String(), ReasonCSRInvalid, codes.InvalidArgument, err.Error())
	}
	if !b.mints() {
		chain, err := b.ca.IssueWorkloadSVIDChain(id, pub, ttl, e.DNSNames)
		if err != nil {
			return nil, b.refuse(ctx, opWorkload, n.node.ID, err)
		}
		return chain, nil
	}
	csr, _ := x509.ParseCertificateRequest(csrDER) // parsed by parseWorkloadCSR
	extra := slices.ContainsFunc(csr.DNSNames, func(d string) bool { return !slices.Contains(e.DNSNames, d) })
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() || extra || len(csr.EmailAddresses)+len(csr.IPAddresses) != 0 {
		return nil, b.deny(ctx, opWorkload, n.id.String(), ReasonCSRInvalid, codes.InvalidArgument,
			fmt.Sprintf("SPIRE mints what the CSR names: it must name %s alone and only DNS names of the entry", id))
	}
	chain, err := b.spire.mint(ctx, csrDER, id, ttl)
	if err != nil {
		b.log.Error("spire: mint workload SVID", logNode, n.id.String(), "entry", e.ID, "err", err)
		return nil, b.deny(ctx, opWorkload, n.id.String(), ReasonSPIREMintFailed, codes.Unavailable, "SPIRE did not mint the workload SVID")
	}
	return chain, nil
}

// fetchSPIREAuthorities reads SPIRE's X.509 authorities from its bundle
// API (bundle/v1 GetBundle): with mint_svids they verify the SVIDs SPIRE
// mints, so writ trusts and publishes them beside its own CA.
func (c *spireClient) fetchSPIREAuthorities(ctx context.Context) ([]*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	resp, err := bundlev1.NewBundleClient(c.conn).GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		return nil, fmt.Errorf("broker: spire: get bundle: %w", err)
	}
	if resp.GetTrustDomain() != c.td.Name() {
		return nil, fmt.Errorf("broker: spire: bundle of %q, want %s", resp.GetTrustDomain(), c.td)
	}
	var out []*x509.Certificate
	for _, a := range resp.GetX509Authorities() {
		cert, err := x509.ParseCertificate(a.GetAsn1())
		if err != nil {
			return nil, fmt.Errorf("broker: spire: bundle: %w", err)
		}
		out = append(out, cert)
	}
	if len(out) == 0 {
		return nil, errors.New("broker: spire: SPIRE's bundle holds no X.509 authority")
	}
	return out, nil
}

// x509Bundle is the bundle writ verifies its trust domain's X.509-SVIDs
// against: its CA, and SPIRE's authorities when SPIRE mints.
func (b *Broker) x509Bundle() *spiffebundle.Bundle {
	bundle := b.ca.Bundle()
	b.addPeerRoots(bundle)
	b.bundleMu.RLock()
	defer b.bundleMu.RUnlock()
	for _, c := range b.spireAuthorities {
		bundle.AddX509Authority(c)
	}
	return bundle
}

// refreshSPIREAuthorities reads SPIRE's X.509 authorities every interval
// and, when they changed (SPIRE prepared or retired a CA), trusts and
// publishes the new set: SPIRE adds a prepared authority to its bundle
// before it mints with it, so agents get it with their next SVID. A
// failed read keeps the set it has, and is logged.
func (b *Broker) refreshSPIREAuthorities(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		got, err := b.spire.fetchSPIREAuthorities(ctx)
		if err != nil {
			b.log.Warn("spire: refresh SPIRE's authorities", "err", err)
			continue
		}
		b.bundleMu.RLock()
		same := slices.EqualFunc(got, b.spireAuthorities, (*x509.Certificate).Equal)
		b.bundleMu.RUnlock()
		if same {
			continue
		}
		b.bundleMu.Lock()
		b.spireAuthorities = got
		b.bundleMu.Unlock()
		if err := b.writeBundle(); err != nil {
			b.log.Error("spire: publish SPIRE's new authorities", "err", err)
			continue
		}
		b.log.Info("spire: SPIRE's X.509 authorities changed; trust bundle rebuilt", "authorities", len(got))
	}
}
