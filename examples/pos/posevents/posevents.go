// Package posevents is the contract between the point-of-sale functions: the reorder request the stock projector emits and the purchasing function consumes.
package posevents

// TypeReorderRequested is the CloudEvents type of a reorder request (subject = SKU, data =
// ReorderRequest).
const TypeReorderRequested = "dev.knfaas.example.pos.reorder.requested"

// ReorderRequest is the data of TypeReorderRequested: a store's stock of a SKU dipped below the
// SKU's threshold.
type ReorderRequest struct {
	SKU       string `json:"sku"`
	Store     string `json:"store"`
	Stock     int64  `json:"stock"`
	Threshold int64  `json:"threshold"`
}
