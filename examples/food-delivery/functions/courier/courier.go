// Package main is the food-delivery example's courier service: it answers the courier commands of the
// food-order process (see food.Courier).
package main

import "github.com/knfaas/knfaas/examples/food-delivery/food"

// New returns the unstarted courier service.
func New() *food.Service[food.Courier] { return food.NewService[food.Courier]("courier") }
