package brokerv1

// LineageMetadata is the gRPC metadata key with which the node agent says
// that a WritRequest's parent is the writ governing the caller's nearest
// governed ancestor, found from the process tree, and that the governed
// process still lives (docs/adr/0031). Its one value is LineageAncestry.
// With it, and only with it, the broker accepts as parent a writ that
// expired less than its lineage retention ago. A node's other callers
// (writ request --direct) hold the same node key and could set it too:
// the agent vouches as the node, and both are the node.
const (
	LineageMetadata = "writ-lineage"
	LineageAncestry = "ancestry"
)
