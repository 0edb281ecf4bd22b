// Package main is the food-delivery example's payment service: it answers the payment commands of the
// food-order process (see food.Payment).
package main

import "github.com/knfaas/knfaas/examples/food-delivery/food"

// New returns the unstarted payment service.
func New() *food.Service[food.Payment] { return food.NewService[food.Payment]("payment") }
