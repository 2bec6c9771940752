//go:build tools

// Package consulbuild pins the Consul server version that kvstore's CI builds and tests against.
// It is never compiled into anything; `go build github.com/hashicorp/consul` reads the pin from
// go.mod. Requiring Consul from this module (instead of `go install ...@version`) avoids the
// refusal caused by the `replace` lines in Consul's own go.mod.
package consulbuild

import _ "github.com/hashicorp/consul"
