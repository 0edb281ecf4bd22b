// Package food holds the example food-delivery services (payment, kitchen, courier): each
// answers the commands of the food-order process with a reply event, and can be told to fail or
// stay silent, globally or per order.
package food

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
)

// Event types of the food-order process. The process manager emits the commands (see
// config/400-food-process-definitions.yaml); the services below emit the replies.
const (
	TypeOrderPlaced      = "dev.knfaas.example.food.order.placed"
	TypeOrderCompleted   = "dev.knfaas.example.food.order.completed"
	TypeOrderFailed      = "dev.knfaas.example.food.order.failed"
	TypeOrderCompensated = "dev.knfaas.example.food.order.compensated"

	TypePaymentAuthorize  = "dev.knfaas.example.food.payment.authorize"
	TypePaymentAuthorized = "dev.knfaas.example.food.payment.authorized"
	TypePaymentDeclined   = "dev.knfaas.example.food.payment.declined"
	TypePaymentRelease    = "dev.knfaas.example.food.payment.release"
	TypePaymentReleased   = "dev.knfaas.example.food.payment.released"

	TypeKitchenPrepare   = "dev.knfaas.example.food.kitchen.prepare"
	TypeKitchenPrepared  = "dev.knfaas.example.food.kitchen.prepared"
	TypeKitchenRejected  = "dev.knfaas.example.food.kitchen.rejected"
	TypeKitchenCancel    = "dev.knfaas.example.food.kitchen.cancel"
	TypeKitchenCancelled = "dev.knfaas.example.food.kitchen.cancelled"

	TypeCourierDeliver   = "dev.knfaas.example.food.courier.deliver"
	TypeCourierDelivered = "dev.knfaas.example.food.courier.delivered"
	TypeCourierFailed    = "dev.knfaas.example.food.courier.failed"
)

// Modes a service can be put in, by its *_MODE variable or per order in "simulate".
const (
	ModeOK     = "ok"     // answer with success
	ModeFail   = "fail"   // answer with the failure reply
	ModeSilent = "silent" // accept the command and never answer (the step times out)
)

// Order is the data of every food-order event: the order placed, copied into each command.
type Order struct {
	OrderID string   `json:"orderId"`
	Amount  float64  `json:"amount"`
	Items   []string `json:"items,omitempty"`
	// Simulate overrides a service's mode for this order: {"kitchen": "silent"}.
	Simulate map[string]string `json:"simulate,omitempty"`
}

// mode is the order's override for service, else the service's configured mode.
func (o Order) mode(service, configured string) string {
	if m := o.Simulate[service]; m != "" {
		return m
	}
	if configured == "" {
		return ModeOK
	}
	return configured
}

func decode(e event.Event) (Order, error) {
	var o Order
	if err := json.Unmarshal(e.Data(), &o); err != nil {
		return o, cloudevents.NewHTTPResult(http.StatusBadRequest, "data of %s is not an order: %v", e.Type(), err)
	}
	return o, nil
}

// reply answers command cmd: the id is the command id plus the outcome, so a redelivered
// command gets the very same reply, and the knfaascommand extension names the command answered.
func reply(cmd event.Event, typ, source string, data any) *event.Event {
	r := cloudevents.NewEvent()
	r.SetID(cmd.ID() + ":" + typ[len("dev.knfaas.example.food."):])
	r.SetType(typ)
	r.SetSource(source)
	r.SetSubject(cmd.Subject())
	r.SetTime(time.Now())
	r.SetExtension("knfaascommand", cmd.ID())
	_ = r.SetData(cloudevents.ApplicationJSON, data)
	return &r
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func unknown(e event.Event) error {
	return cloudevents.NewHTTPResult(http.StatusBadRequest, "unexpected event type %s", e.Type())
}

// Payment authorizes and releases payments.
type Payment struct {
	// DeclineAbove declines authorizations above this amount.
	DeclineAbove float64 `envconfig:"PAYMENT_DECLINE_ABOVE" default:"1000"`
	// Mode is ok, fail (decline) or silent.
	Mode string `envconfig:"PAYMENT_MODE" default:"ok"`
	// Delay is waited before answering.
	Delay time.Duration `envconfig:"PAYMENT_DELAY" default:"0s"`
}

// Handle answers payment.authorize and payment.release.
func (p Payment) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	o, err := decode(e)
	if err != nil {
		return nil, err
	}
	const src = "/examples/food-delivery/payment"
	mode := o.mode("payment", p.Mode)
	if mode == ModeSilent {
		return nil, nil
	}
	if err := sleep(ctx, p.Delay); err != nil {
		return nil, err
	}
	switch e.Type() {
	case TypePaymentAuthorize:
		if mode == ModeFail || o.Amount > p.DeclineAbove {
			return reply(e, TypePaymentDeclined, src, map[string]any{"orderId": o.OrderID, "reason": "declined by the card issuer"}), nil
		}
		return reply(e, TypePaymentAuthorized, src, map[string]any{"orderId": o.OrderID, "authorization": "auth-" + o.OrderID, "amount": o.Amount}), nil
	case TypePaymentRelease:
		return reply(e, TypePaymentReleased, src, map[string]any{"orderId": o.OrderID, "authorization": "auth-" + o.OrderID}), nil
	}
	return nil, unknown(e)
}

// Kitchen prepares and cancels orders.
type Kitchen struct {
	// Mode is ok, fail (reject the order) or silent (never answer a prepare: the step times out).
	Mode string `envconfig:"KITCHEN_MODE" default:"ok"`
	// Delay is waited before answering a prepare.
	Delay time.Duration `envconfig:"KITCHEN_DELAY" default:"0s"`
}

// Handle answers kitchen.prepare and kitchen.cancel.
func (k Kitchen) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	o, err := decode(e)
	if err != nil {
		return nil, err
	}
	const src = "/examples/food-delivery/kitchen"
	switch e.Type() {
	case TypeKitchenPrepare:
		mode := o.mode("kitchen", k.Mode)
		if mode == ModeSilent {
			return nil, nil
		}
		if err := sleep(ctx, k.Delay); err != nil {
			return nil, err
		}
		if mode == ModeFail {
			return reply(e, TypeKitchenRejected, src, map[string]any{"orderId": o.OrderID, "reason": "out of ingredients"}), nil
		}
		return reply(e, TypeKitchenPrepared, src, map[string]any{"orderId": o.OrderID, "ticket": "ticket-" + o.OrderID}), nil
	case TypeKitchenCancel:
		return reply(e, TypeKitchenCancelled, src, map[string]any{"orderId": o.OrderID, "ticket": "ticket-" + o.OrderID}), nil
	}
	return nil, unknown(e)
}

// Courier delivers orders.
type Courier struct {
	// Mode is ok, fail or silent.
	Mode string `envconfig:"COURIER_MODE" default:"ok"`
	// Delay is waited before answering.
	Delay time.Duration `envconfig:"COURIER_DELAY" default:"0s"`
}

// Handle answers courier.deliver.
func (c Courier) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	o, err := decode(e)
	if err != nil {
		return nil, err
	}
	if e.Type() != TypeCourierDeliver {
		return nil, unknown(e)
	}
	const src = "/examples/food-delivery/courier"
	mode := o.mode("courier", c.Mode)
	if mode == ModeSilent {
		return nil, nil
	}
	if err := sleep(ctx, c.Delay); err != nil {
		return nil, err
	}
	if mode == ModeFail {
		return reply(e, TypeCourierFailed, src, map[string]any{"orderId": o.OrderID, "reason": "address not found"}), nil
	}
	return reply(e, TypeCourierDelivered, src, map[string]any{"orderId": o.OrderID}), nil
}
