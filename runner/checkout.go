package runner

import (
	"context"
	"io"

	"github.com/airlock-ci/airlock/runner/checkout"
)

// CheckoutSpec says which sources to fetch for a job (see checkout.Spec).
type CheckoutSpec = checkout.Spec

// Checkout fetches the sources into dir on the host (see checkout.Run).
func Checkout(ctx context.Context, spec CheckoutSpec, dir string, out io.Writer) error {
	return checkout.Run(ctx, spec, dir, out)
}
