package authzgate

import (
	"encoding/json"
	"os"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"
)

// The typed configs deploy/envoy/envoy.yaml names, registered for
// protojson.
var (
	_ = &tlsv3.DownstreamTlsContext{}
	_ = &routerv3.Router{}
	_ = &httpv3.HttpProtocolOptions{}
)

// TestEnvoyConfig: deploy/envoy/envoy.yaml is a valid Envoy bootstrap (its
// protos as go-control-plane v1.40.0 has them, with their validation
// rules), and its ext_authz filter has what writ needs: failure_mode_allow
// false, include_peer_certificate, encode_raw_headers, the whole body as
// bytes (allow_partial_message false, pack_as_bytes) and the gRPC service.
func TestEnvoyConfig(t *testing.T) {
	raw, err := os.ReadFile("../deploy/envoy/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatal(err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	var hcm hcmv3.HttpConnectionManager
	if err := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	var ea extauthzv3.ExtAuthz
	if err := hcm.GetHttpFilters()[0].GetTypedConfig().UnmarshalTo(&ea); err != nil {
		t.Fatal(err)
	}
	body := ea.GetWithRequestBody()
	if ea.GetFailureModeAllow() || !ea.GetIncludePeerCertificate() || !ea.GetEncodeRawHeaders() || body == nil ||
		body.GetAllowPartialMessage() || !body.GetPackAsBytes() || body.GetMaxRequestBytes() > DefaultMaxBody ||
		ea.GetGrpcService().GetEnvoyGrpc().GetClusterName() != "writ_authz" {
		t.Fatalf("ext_authz filter %v", &ea)
	}
}
