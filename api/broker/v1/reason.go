package brokerv1

import (
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the ErrorInfo domain of writ's refusals.
const ErrorDomain = "writ.dev"

// Refuse returns a gRPC error carrying a stable reason code in its
// ErrorInfo, and msg, which a user may read.
func Refuse(code codes.Code, reason, msg string) error {
	return RefuseWith(code, reason, msg, nil)
}

// RefuseWith is Refuse with machine-readable detail in the ErrorInfo's
// metadata (such as approval_id), which MetadataOf reads back.
func RefuseWith(code codes.Code, reason, msg string, metadata map[string]string) error {
	st := status.New(code, reason+": "+msg)
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: metadata}); err == nil {
		st = withInfo
	}
	return st.Err()
}

// ReasonOf returns the reason code of a refusal made by Refuse, or "" when
// err carries none.
func ReasonOf(err error) string { return errorInfo(err).GetReason() }

// MetadataOf returns the metadata of a refusal made by RefuseWith (nil
// when it carries none).
func MetadataOf(err error) map[string]string { return errorInfo(err).GetMetadata() }

// errorInfo is the writ ErrorInfo of err, or nil.
func errorInfo(err error) *errdetails.ErrorInfo {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return nil
	}
	for _, d := range se.GRPCStatus().Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info
		}
	}
	return nil
}
