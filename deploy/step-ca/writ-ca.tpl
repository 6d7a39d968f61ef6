{
	"subject": {"commonName": "writ CA writ.example"},
	"uris": ["spiffe://writ.example"],
	"keyUsage": ["certSign", "crlSign"],
	"basicConstraints": {"isCA": true, "maxPathLen": 0},
	"nameConstraints": {"critical": true, "permittedURIDomains": ["writ.example"]}
}
