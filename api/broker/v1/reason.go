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
	st := status.New(code, reason+": "+msg)
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}); err == nil {
		st = withInfo
	}
	return st.Err()
}

// ReasonOf returns the reason code of a refusal made by Refuse, or "" when
// err carries none.
func ReasonOf(err error) string {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return ""
	}
	for _, d := range se.GRPCStatus().Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}
