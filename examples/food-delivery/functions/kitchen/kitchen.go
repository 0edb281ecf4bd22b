// Package main is the food-delivery example's kitchen service: it answers the kitchen commands of the
// food-order process (see food.Kitchen).
package main

import "github.com/knfaas/knfaas/examples/food-delivery/food"

// New returns the unstarted kitchen service.
func New() *food.Service[food.Kitchen] { return food.NewService[food.Kitchen]("kitchen") }
