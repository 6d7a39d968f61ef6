package broker

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/identity/stepca"
)

// ReasonCARotationFailed is logged when the CA could not prepare or
// activate its successor; it retries, and the current CA keeps signing
// until its end.
const ReasonCARotationFailed = "ca_rotation_failed"

// Bounds of the wait between two rotation checks.
const (
	minRotateWait   = time.Second
	maxRotateWait   = time.Minute
	rotateRetryWait = 10 * time.Second
)

// openCA opens the signing CA the configuration names (docs/adr/0035):
// an operator's, one signed by a step-ca, or the broker's own root; with
// its keys in files or in the host's TPM. closeFn releases the TPM.
func openCA(ctx context.Context, cfg *Config) (_ *identity.CA, closeFn func() error, err error) {
	c := cfg.CA
	opts := identity.CAOptions{Dir: cfg.DataDir, Lifetime: c.Lifetime, RotateAt: c.RotateAt}
	closeFn = func() error { return nil }
	if c.KeyStore == "tpm" {
		keys, err := openTPMKeys(c.TPM)
		if err != nil {
			return nil, nil, err
		}
		opts.Keys, closeFn = keys, keys.close
	}
	ca, err := openCAWith(ctx, cfg, opts)
	if err != nil {
		return nil, nil, errors.Join(err, closeFn())
	}
	return ca, closeFn, nil
}

func openCAWith(ctx context.Context, cfg *Config, opts identity.CAOptions) (*identity.CA, error) {
	c := cfg.CA
	switch {
	case c.Cert != "":
		s, err := loadStaticCA(c)
		if err != nil {
			return nil, fmt.Errorf("broker: ca: %w", err)
		}
		opts.Static = s
	case c.Upstream != nil:
		roots, err := identity.LoadCerts(c.Upstream.Root)
		if err != nil {
			return nil, fmt.Errorf("broker: ca.upstream.root: %w", err)
		}
		sc := stepca.Config{URL: c.Upstream.StepCA, Root: roots[0], Provisioner: c.Upstream.Provisioner, TrustDomain: cfg.trustDomain()}
		if err := loadProvisioner(c.Upstream, &sc); err != nil {
			return nil, err
		}
		client, err := stepca.New(sc)
		if err != nil {
			return nil, fmt.Errorf("broker: ca.upstream: %w", err)
		}
		opts.Upstream, opts.UpstreamRoots = client, roots
	}
	ca, err := identity.OpenCA(ctx, cfg.trustDomain(), opts)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	return ca, nil
}

// loadProvisioner reads the provisioner's credential: a JWK, or an X5C
// certificate chain and its key.
func loadProvisioner(u *UpstreamConfig, sc *stepca.Config) error {
	var err error
	if u.ProvisionerKey != "" {
		if sc.Key, err = stepca.LoadKey(u.ProvisionerKey); err != nil {
			return fmt.Errorf("broker: ca.upstream.provisioner_key: %w", err)
		}
		return nil
	}
	if sc.X5C, err = identity.LoadCerts(u.ProvisionerCert); err != nil {
		return fmt.Errorf("broker: ca.upstream.provisioner_cert: %w", err)
	}
	if sc.X5CKey, err = identity.LoadKey(u.ProvisionerCertKey); err != nil {
		return fmt.Errorf("broker: ca.upstream.provisioner_cert_key: %w", err)
	}
	return nil
}

func loadStaticCA(c CAConfig) (*identity.StaticCA, error) {
	certs, err := identity.LoadCerts(c.Cert)
	if err != nil {
		return nil, err
	}
	s := &identity.StaticCA{Cert: certs[0], Chain: certs[1:]}
	if c.Chain != "" {
		chain, err := identity.LoadCerts(c.Chain)
		if err != nil {
			return nil, err
		}
		s.Chain = append(s.Chain, chain...)
	}
	if s.Roots, err = identity.LoadCerts(c.Roots); err != nil {
		return nil, err
	}
	// A root in the chain file is a trust anchor, not something SVIDs carry.
	var chain []*x509.Certificate
	for _, cert := range s.Chain {
		if !containsCert(s.Roots, cert) {
			chain = append(chain, cert)
		}
	}
	s.Chain = chain
	if s.Key, err = identity.LoadKey(c.Key); err != nil {
		return nil, err
	}
	return s, nil
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, have := range certs {
		if have.Equal(c) {
			return true
		}
	}
	return false
}

// rotateCA moves the CA along its lifecycle until ctx ends: it wakes when
// the CA next has something to do (within [1s, 1m]), and when the roots
// changed it republishes the bundle, whose sequence number then grows.
func (b *Broker) rotateCA(ctx context.Context) {
	if b.ca.NextRotation().IsZero() {
		return // an operator's CA: the operator rotates it
	}
	wait := rotateWait(b.ca.NextRotation())
	republish := false // the roots changed and the bundle is not yet republished
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		changed, err := b.ca.Rotate(ctx)
		wait = rotateWait(b.ca.NextRotation())
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			b.log.Error("CA rotation failed; the current CA keeps signing", logReason, ReasonCARotationFailed,
				"ca_reason", identity.CAReason(err), "err", err)
			wait = rotateRetryWait
		}
		if republish = republish || changed; republish {
			// The other replicas learn the new roots now, not at the
			// next poll (docs/adr/0041).
			if _, err := b.syncReplicas(ctx); err != nil {
				b.log.Warn("publish the new roots to the other replicas; retried at the next poll", "err", err)
			}
			if err := b.writeBundle(); err != nil {
				b.log.Error("republish bundle after CA rotation", "err", err)
				wait = rotateRetryWait
				continue
			}
			republish = false
			b.log.Info("CA roots changed; bundle republished", "roots", len(b.ca.Roots()), "signer_not_after", b.ca.Root().NotAfter)
		}
	}
}

func rotateWait(at time.Time) time.Duration {
	return min(max(time.Until(at), minRotateWait), maxRotateWait)
}

func rawCerts(certs []*x509.Certificate) [][]byte {
	out := make([][]byte, len(certs))
	for i, c := range certs {
		out[i] = c.Raw
	}
	return out
}
