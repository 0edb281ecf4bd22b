// Package lib is a library, not a function.
package lib
