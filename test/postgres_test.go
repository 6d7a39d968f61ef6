package test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/identity"
)

// postgresDB creates a fresh database writ_test_<random> on the
// PostgreSQL at 127.0.0.1:5432 (or WRIT_TEST_POSTGRES, a DSN of a database
// to connect to first), dropped when the test ends, and returns its DSN.
// Unreachable: the test skips, or fails with WRIT_REQUIRE_POSTGRES=1.
func postgresDB(t testing.TB) string {
	t.Helper()
	admin := os.Getenv("WRIT_TEST_POSTGRES")
	if admin == "" {
		admin = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	db, err := sql.Open("pgx", admin)
	if err == nil {
		c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = db.PingContext(c)
		cancel()
	}
	if err != nil {
		if os.Getenv("WRIT_REQUIRE_POSTGRES") == "1" {
			t.Fatalf("PostgreSQL unreachable (WRIT_REQUIRE_POSTGRES=1: required): %v", err)
		}
		t.Skipf("PostgreSQL unreachable: %v (set WRIT_REQUIRE_POSTGRES=1 to fail instead)", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := "writ_test_" + hex.EncodeToString(b)
	if _, err := db.ExecContext(context.Background(), "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := db.ExecContext(context.Background(), "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// TestBrokerOnPostgres (issue 11, deliverable 1): a broker whose store is
// PostgreSQL. A swtpm node enrolls and attests; it gets a single-use writ
// for a gateway, which the gateway consumes once; a second use is
// refused (writ_replayed), also by a broker restarted on the same
// database: the record is in PostgreSQL, not in the broker's memory or
// its data directory.
func TestBrokerOnPostgres(t *testing.T) {
	dsn := postgresDB(t)
	rules := fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n"+
		"      audiences: [\"spiffe://%s/gateway\"]\n", td.Name(), shDigest(t), td.Name())
	e := newExecEnv(t, rules+fmt.Sprintf("store:\n  driver: postgres\n  dsn: %q\n", dsn))
	if e.b.cfg.Store.Driver != "postgres" {
		t.Fatalf("store driver %q", e.b.cfg.Store.Driver)
	}
	if _, err := os.Stat(filepath.Join(e.b.cfg.DataDir, broker.DBFile)); !os.IsNotExist(err) {
		t.Fatalf("a SQLite file in DATA_DIR beside PostgreSQL: %v", err)
	}
	bundle, err := spiffebundle.Load(td, e.b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := e.b.Store().Nodes(ctx(t))
	if err != nil || len(nodes) != 1 || nodes[0].State != "attested" {
		t.Fatalf("nodes in PostgreSQL: %+v, %v; want one attested", nodes, err)
	}

	gw := gatewaySVID(t, e)
	dial := func(conf *tls.Config) brokerv1.BrokerClient {
		conn, err := grpc.NewClient(e.b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return brokerv1.NewBrokerClient(conn)
	}
	node := dial(tlsconfig.MTLSClientConfig(e.nodeSVID(t, bundle), bundle, tlsconfig.AuthorizeID(identity.BrokerID(td))))
	sh, _ := filepath.EvalSymlinks("/bin/sh")
	resp, err := node.RequestWrit(ctx(t), &brokerv1.WritRequest{
		Exec:     &brokerv1.ExecAction{Argv: []string{"/bin/sh", "-c", "true"}, Path: sh, Sha256: shDigest(t), Cwd: "/"},
		Audience: gw.ID.String(), Once: true})
	if err != nil {
		t.Fatal(err)
	}
	if w, err := e.b.Store().IssuedWrit(ctx(t), resp.GetJti()); err != nil || w.Node != "spiffe://"+td.Name()+"/node/"+nodes[0].ID {
		t.Fatalf("issued writ in PostgreSQL: %+v, %v", w, err)
	}
	gwConf := tlsconfig.MTLSClientConfig(gw, bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))
	consume := func() error {
		_, err := dial(gwConf).ConsumeWrit(ctx(t), &brokerv1.ConsumeWritRequest{Writ: resp.GetWrit()})
		return err
	}
	if err := consume(); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if err := consume(); brokerv1.ReasonOf(err) != broker.ReasonWritReplayed {
		t.Fatalf("second use: %v, want %s", err, broker.ReasonWritReplayed)
	}

	// A broker restarted on the same database (and data directory, for
	// its keys) still refuses it.
	cfg := e.b.cfg
	e.b.stop(t)
	e.b = startBroker(t, filepath.Join(filepath.Dir(cfg.DataDir), "broker.yaml"))
	if err := consume(); brokerv1.ReasonOf(err) != broker.ReasonWritReplayed {
		t.Fatalf("use after a restart: %v, want %s", err, broker.ReasonWritReplayed)
	}
}
